"""Benchmark: attempt rows per second, batched versus one row per transaction (a script).

    .venv/bin/python tests/bench/bench_audit.py [--rows 100000] [--single 3000] [--jobs 1000]

In a fresh PostgreSQL database and under a Redis key prefix of its own (both removed at the
end) it times, through the public `AuditWriter` calls a worker makes (redaction and
validation included), from the first call until the last row has committed (`flush()`):

- single:  `attempt()` with one transaction per row (the writer without a batcher);
- batched: `attempt()` into an `AuditBatcher` with the Redis spool, as workers run it: buffer,
           one XADD per 500 ops, drained into PostgreSQL up to 2,000 ops per transaction;
- direct:  the same without Redis: batches of 500 written straight to PostgreSQL;
- mix:     what a delivery really writes, `job_started` + `attempt` + `job_status` per
           attempt, through the spool; reported as attempt rows per second (three writes each).

It then counts the rows: every attempt exactly once. Target: at least 5,000 attempt rows/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime

os.environ.setdefault("LOG_LEVEL", "warning")
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

import psycopg  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import Engine, func, select  # noqa: E402

from recovery.audit import AttemptRecord, AuditWriter  # noqa: E402
from recovery.audit.db import make_engine, upgrade  # noqa: E402
from recovery.audit.models import Attempt  # noqa: E402
from recovery.audit.spool import AuditBatcher, RedisSpool  # noqa: E402

NOW = datetime.now(UTC)
PREFIX = f"bench-{uuid.uuid4().hex[:8]}:"
REDIS = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))


def batcher(engine: Engine, spooled: bool = True) -> AuditBatcher:
    return AuditBatcher(engine, RedisSpool(REDIS, PREFIX) if spooled else None)


def record(job_id: str, number: int) -> AttemptRecord:
    return AttemptRecord(job_id=job_id, number=number, kind="call", started_at=NOW,
                         duration_ms=12, decision="retry", http_status=503,
                         error_categories=["server_error"], retryable=True,
                         error_message="HTTP 503 Service Unavailable", delay_ms=1000,
                         delay_source="backoff", strategy="server-error-circuit",
                         worker="bench:1")


def make_jobs(engine: Engine, count: int) -> list[str]:
    ids = [f"bench-{uuid.uuid4().hex}" for _ in range(count)]
    writer = AuditWriter(engine, batcher=batcher(engine))
    for job_id in ids:
        writer.job_started(job_id, "bench", "POST", "/orders", {"page": 1}, job_id, 1)
    writer.flush()
    writer.close()
    return ids


def run_single(engine: Engine, jobs: list[str], rows: int) -> float:
    writer = AuditWriter(engine)
    started = time.perf_counter()
    for n in range(rows):
        writer.attempt(record(jobs[n % len(jobs)], n))
    return rows / (time.perf_counter() - started)


def run_batched(engine: Engine, jobs: list[str], rows: int, spooled: bool = True) -> float:
    writer = AuditWriter(engine, batcher=batcher(engine, spooled))
    started = time.perf_counter()
    for n in range(rows):
        writer.attempt(record(jobs[n % len(jobs)], n))
    writer.flush(timeout_s=600)
    elapsed = time.perf_counter() - started
    writer.close()
    return rows / elapsed


def run_mix(engine: Engine, jobs: list[str], rows: int) -> float:
    writer = AuditWriter(engine, batcher=batcher(engine))
    started = time.perf_counter()
    for n in range(rows):
        job_id = jobs[n % len(jobs)]
        writer.job_started(job_id, "bench", "POST", "/orders", {"page": 1}, job_id, n)
        writer.attempt(record(job_id, n))
        writer.job_status(job_id, "retrying", attempts=n, last_status=503,
                          last_error="HTTP 503 Service Unavailable")
    writer.flush(timeout_s=600)
    elapsed = time.perf_counter() - started
    writer.close()
    return rows / elapsed


def count_attempts(engine: Engine) -> tuple[int, int]:
    table = Attempt.__table__
    with engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(table))
        distinct = conn.scalar(select(func.count(func.distinct(table.c.dedupe_key))))
    return int(total or 0), int(distinct or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=3_000)
    parser.add_argument("--jobs", type=int, default=1_000)
    args = parser.parse_args(argv)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    try:
        upgrade(url)
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        jobs = make_jobs(engine, args.jobs)
        single = run_single(engine, jobs, args.single)
        print(f"single:  {args.single:>7} attempt rows  {single:>9,.0f} rows/s")
        batched = run_batched(engine, jobs, args.rows)
        print(f"batched: {args.rows:>7} attempt rows  {batched:>9,.0f} rows/s  "
              f"({batched / single:.1f}x single)")
        direct = run_batched(engine, jobs, args.rows // 2, spooled=False)
        print(f"direct:  {args.rows // 2:>7} attempt rows  {direct:>9,.0f} rows/s  "
              f"({direct / single:.1f}x single)")
        mix = run_mix(engine, jobs, args.rows // 2)
        print(f"mix:     {args.rows // 2:>7} attempt rows  {mix:>9,.0f} rows/s  "
              "(job_started + attempt + job_status each)")
        total, distinct = count_attempts(engine)
        expected = args.single + args.rows + 2 * (args.rows // 2)
        print(f"check: attempts={total} distinct={distinct} expected={expected}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        ok = total == distinct == expected and batched >= 5000
        print("result:", "OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        engine.dispose()
        keys = list(REDIS.scan_iter(match=f"{PREFIX}*"))
        if keys:
            REDIS.delete(*keys)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
