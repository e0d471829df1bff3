"""Benchmark: an uncapped replay of 10,000 dead letters (a script; pytest does not collect it).

    .venv/bin/python tests/bench/bench_replay.py [--entries 10000]

It parks the entries in a fresh `dlq` (Redis db 15, a key prefix of its own) with their audit
rows in a fresh PostgreSQL database, replays them all with `replay_dlq`, and then checks the
work queue: every job id exactly once (none lost, none duplicated), the same idempotency keys,
replay count 1, and the audit trail agreeing. Target: at least 1,000 entries/s.
Everything it created is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any

PREFIX = f"bench-{uuid.uuid4().hex[:8]}:"
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ["RECOVERY_REDIS_PREFIX"] = PREFIX
os.environ.setdefault("LOG_LEVEL", "warning")
os.environ.pop("RECOVERY_INTEGRATIONS", None)
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

import psycopg  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from recovery.audit.db import upgrade  # noqa: E402
from recovery.audit.models import DeadLetter, Job  # noqa: E402
from recovery.config.queues import DLQ_QUEUE  # noqa: E402
from recovery.core.message import JobSpec, new_job_id, parse_time, utc_now_iso  # noqa: E402
from recovery.dlq.envelope import Envelope, envelope_for  # noqa: E402
from recovery.dlq.replay import ReplayOptions, replay_dlq  # noqa: E402
from recovery.dlq.store import decode_body  # noqa: E402
from recovery.engine.runtime import Runtime, get_runtime, reset_runtime  # noqa: E402
from recovery.telemetry.logging import configure_logging  # noqa: E402


def make_envelopes(count: int) -> list[Envelope]:
    now = utc_now_iso()
    return [envelope_for(
        JobSpec(job_id=new_job_id(), integration="primary-api", method="POST",
                path=f"/orders/{n}", json={"n": n, "items": ["a", "b"]}, params={"page": "1"},
                headers={"X-Team": "bench"}, idempotency_key=f"bench-{n}-{uuid.uuid4().hex}",
                enqueued_at=now),
        categories=["server_error"], last_status=503, message="HTTP 503 Service Unavailable",
        attempts=3, dead_at=now) for n in range(count)]


def park(envelopes: list[Envelope]) -> None:
    """Publish the envelopes to `dlq` (pipelined) and bulk-insert the audit rows a worker
    would have written."""
    from recovery.celery_app import app

    with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for envelope in envelopes:
            producer.publish(envelope.sealed_message(), exchange="", routing_key=DLQ_QUEUE,
                             serializer="json", delivery_mode=2)
    rt = get_runtime()
    jobs = [{"id": e.job_id, "integration": e.integration, "method": e.method, "path": e.path,
             "params": e.params, "idempotency_key": e.idempotency_key, "status": "dead",
             "attempts": e.attempts, "deferrals": 0, "replay_count": 0,
             "first_seen_at": parse_time(e.first_enqueued_at),
             "updated_at": parse_time(e.dead_at)} for e in envelopes]
    dead = [{"job_id": e.job_id, "integration": e.integration, "task_name": e.task_name,
             "error_categories": e.error_categories, "last_status": e.last_status,
             "message": e.message, "attempts": e.attempts,
             "first_enqueued_at": parse_time(e.first_enqueued_at),
             "dead_at": parse_time(e.dead_at), "replay_count": 0, "state": "parked",
             "envelope": e.view()} for e in envelopes]
    with rt.engine.begin() as conn:
        conn.execute(insert(Job.__table__), jobs)
        conn.execute(insert(DeadLetter.__table__), dead)


def verify(rt: Runtime, client: redis.Redis, envelopes: list[Envelope]) -> dict[str, Any]:
    raws = client.lrange(f"{PREFIX}integrations", 0, -1)
    jobs = [decode_body(raw)[0][1]["job"] for raw in raws]
    seen = Counter(job["job_id"] for job in jobs)
    expected = {e.job_id: e.idempotency_key for e in envelopes}
    with rt.engine.connect() as conn:
        queued = conn.scalar(select(func.count()).select_from(Job.__table__).where(
            Job.__table__.c.status == "queued", Job.__table__.c.replay_count == 1))
        replayed = conn.scalar(select(func.count()).select_from(DeadLetter.__table__).where(
            DeadLetter.__table__.c.state == "replayed"))
    return {
        "in_work_queue": len(jobs),
        "left_in_dlq": int(client.llen(f"{PREFIX}{DLQ_QUEUE}")),
        "lost": len(set(expected) - set(seen)),
        "duplicated": sum(1 for n in seen.values() if n > 1),
        "unexpected": len(set(seen) - set(expected)),
        "wrong_key_or_count": sum(1 for job in jobs if job["job_id"] in expected and (
            job["idempotency_key"] != expected[job["job_id"]] or job["replay_count"] != 1)),
        "audit_jobs_queued": queued,
        "audit_dead_letters_replayed": replayed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    count = parser.parse_args().entries
    database = f"t_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    os.environ["DATABASE_URL"] = ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        configure_logging("warning")
        upgrade(os.environ["DATABASE_URL"])
        envelopes = make_envelopes(count)
        park(envelopes)
        rt = get_runtime()
        started = time.perf_counter()
        report = replay_dlq(rt, ReplayOptions(actor="bench"))
        elapsed = time.perf_counter() - started
        checks = verify(rt, client, envelopes)
        print(f"entries: {count}  replayed: {report.summary()['replayed']}  "
              f"elapsed: {elapsed:.2f} s  rate: {count / elapsed:,.0f} entries/s")
        print("checks: " + "  ".join(f"{name}={value}" for name, value in checks.items()))
        ok = (checks["lost"] == checks["duplicated"] == checks["unexpected"] == 0
              and checks["in_work_queue"] == count and checks["left_in_dlq"] == 0)
        print("result: " + ("OK, none lost, none duplicated" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        reset_runtime()
        keys = list(client.scan_iter(match=f"*{PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
