"""Batched audit writes, the sequence guard on job rows, and the Redis spool (PostgreSQL, SQLite).

The batched path must store exactly what the one-row-at-a-time path stores; writes that arrive
late, twice, or out of order must never put an older status over a newer one or store an
attempt twice; and nothing may be lost while the database is away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from structlog.testing import capture_logs

from recovery.audit import AttemptRecord, AuditWriter, db
from recovery.audit import spool as spool_module
from recovery.audit.models import Attempt, Job
from recovery.audit.spool import AuditBatcher, RedisSpool, enable_batching
from recovery.audit.sql import (
    Op,
    execute_op,
    execute_op_portable,
    next_seq,
    utc_iso,
    write_batch,
)
from recovery.audit.writer import make_audit_writer
from recovery.core.redact import AuditPolicy
from tests.integration._db import PG_ADMIN_URL, database

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DEAD_DB = "postgresql://postgres@127.0.0.1:1/nowhere"
DEAD_REDIS = "redis://127.0.0.1:1/15"


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with database(request.param, tmp_path_factory.mktemp("batch")) as url:
        db.upgrade(url)
        engine = db.make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def spool(redis_client: redis.Redis) -> RedisSpool:
    return RedisSpool(redis_client, f"{os.environ['RECOVERY_REDIS_PREFIX']}{uuid.uuid4().hex}:")


@pytest.fixture
def dead_engine() -> Iterator[Engine]:
    engine = db.make_engine(DEAD_DB)
    yield engine
    engine.dispose()


def new_id() -> str:
    return uuid.uuid4().hex


def started(writer: AuditWriter, job_id: str, attempt: int = 1) -> bool:
    return writer.job_started(job_id, "shop", "post", "/orders?token=s3cret", {"a": 1},
                              f"key-{job_id}", attempt)


def call(job_id: str, number: int, decision: str = "done", **extra: Any) -> AttemptRecord:
    return AttemptRecord(job_id=job_id, number=number, kind="call",
                         started_at=T0 + timedelta(seconds=number), duration_ms=5,
                         decision=decision, **extra)


def job_row(engine: Engine, job_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(Job.__table__).where(Job.id == job_id)).mappings().first()
    return None if row is None else dict(row)


def plain_job(engine: Engine, job_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(Job.__table__).where(Job.id == job_id)).mappings().one()
    return {k: v for k, v in row.items() if k not in ("id", "status_seq")}


def attempt_rows(engine: Engine, job_id: str) -> list[dict[str, Any]]:
    table = Attempt.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(table).where(table.c.job_id == job_id)
                            .order_by(table.c.id)).mappings().all()
    return [{k: v for k, v in row.items() if k not in ("id", "job_id", "dedupe_key")}
            for row in rows]


def scenario(writer: AuditWriter, job_id: str) -> None:
    """One job's writes as a worker makes them: a retry, a deferral, then success."""
    writer.job_queued(job_id, "shop", "post", "/orders", {"password": "hunter2"}, "k")
    started(writer, job_id, 1)
    writer.attempt(call(job_id, 1, "retry", http_status=503, error_categories=["server_error"],
                        retryable=True, error_message="Bearer abc.def.ghi failed",
                        delay_ms=200, delay_source="backoff", strategy="server-error-circuit",
                        dedupe_key=f"{job_id}-1"))
    writer.job_status(job_id, "retrying", attempts=1, last_status=503, last_error="HTTP 503")
    started(writer, job_id, 2)
    writer.attempt(AttemptRecord(job_id=job_id, number=2, kind="deferral", started_at=T0,
                                 duration_ms=0, decision="defer", dedupe_key=f"{job_id}-2"))
    writer.job_status(job_id, "deferred", deferrals=1)
    started(writer, job_id, 2)
    writer.attempt(call(job_id, 2, http_status=200, dedupe_key=f"{job_id}-3"))
    writer.job_status(job_id, "succeeded", attempts=2, outcome="HTTP 200", last_status=200,
                      finished=True)


def test_a_batch_stores_exactly_what_single_writes_store(engine: Engine) -> None:
    direct_id, batched_id = new_id(), new_id()
    scenario(AuditWriter(engine, clock=lambda: T0), direct_id)
    batched = AuditWriter(engine, clock=lambda: T0, batcher=AuditBatcher(engine, interval_s=60))
    scenario(batched, batched_id)
    assert job_row(engine, batched_id) is None, "the batcher wrote before a flush was due"
    assert batched.close()

    assert plain_job(engine, batched_id) == plain_job(engine, direct_id)
    assert attempt_rows(engine, batched_id) == attempt_rows(engine, direct_id)
    found = plain_job(engine, batched_id)
    assert (found["status"], found["attempts"], found["deferrals"]) == ("succeeded", 2, 1)
    assert found["last_error"] == "HTTP 503" and found["params"] == {"password": "[REDACTED]"}
    assert "s3cret" not in found["path"]
    assert [a["decision"] for a in attempt_rows(engine, batched_id)] == ["retry", "defer", "done"]


class _Collect:
    """Stands in for a batcher: keeps the ops a writer makes, writes nothing."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def submit(self, op: Op) -> bool:
        self.ops.append(op)
        return True


def _as_job(ops: list[Op], job_id: str) -> list[Op]:
    """The same ops for another job (attempts get their own dedupe keys)."""
    return [replace(op, job_id=job_id, values={
        **op.values, **({"dedupe_key": f"{job_id}-{n}"} if op.kind == "attempt" else {})})
        for n, op in enumerate(ops)]


def test_a_single_write_stores_what_the_portable_statements_store(engine: Engine) -> None:
    collected = _Collect()
    scenario(AuditWriter(engine, clock=lambda: T0, batcher=collected), "template")  # type: ignore[arg-type]
    fast_id, portable_id = new_id(), new_id()
    for fast, portable in zip(_as_job(collected.ops, fast_id), _as_job(collected.ops, portable_id),
                              strict=True):
        with engine.begin() as conn:
            assert execute_op(conn, fast)
        with engine.begin() as conn:
            assert execute_op_portable(conn, portable)
    assert plain_job(engine, fast_id) == plain_job(engine, portable_id)
    assert attempt_rows(engine, fast_id) == attempt_rows(engine, portable_id)
    assert plain_job(engine, fast_id)["status"] == "succeeded"
    with engine.begin() as conn:  # a status for a job with no row is reported, by both
        missing = _as_job([op for op in collected.ops if op.kind == "job_status"], new_id())[0]
        assert not execute_op(conn, missing) and not execute_op_portable(conn, missing)


def test_params_holding_a_nul_are_stored_by_a_batch_too(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    shows_q = AuditPolicy.of(show_params=["q"])  # the integration's audit block shows q
    monkeypatch.setattr("recovery.audit.writer.policy_for", lambda _: shows_q)
    job_id = new_id()
    batched = AuditWriter(engine, batcher=AuditBatcher(engine, interval_s=60))
    with capture_logs() as logs:
        batched.job_queued(job_id, "shop", "GET", "/a", {"q": "nul\x00inside"}, "k")
        batched.job_started(job_id, "shop", "GET", "/a", {"q": "nul\x00inside"}, "k", 1)
        assert batched.close()
    assert "audit_op_rejected" not in [entry["event"] for entry in logs]
    found = plain_job(engine, job_id)
    assert (found["status"], found["params"]) == ("running", {"q": "nul\x00inside"})


def test_an_older_write_arriving_late_never_replaces_a_newer_status(engine: Engine) -> None:
    job_id = new_id()
    writer = AuditWriter(engine, batcher=AuditBatcher(engine, interval_s=60))
    started(writer, job_id)
    assert writer.flush()
    stale_running = Op("job_started", job_id, next_seq(), {
        "integration": "shop", "method": "POST", "path": "/x", "params": {},
        "idempotency_key": "k", "now": utc_iso(T0), "attempt": 1})
    stale_retrying = Op("job_status", job_id, next_seq(), {
        "status": "retrying", "now": utc_iso(T0), "attempts": 1, "last_error": "late"})
    writer.job_status(job_id, "succeeded", attempts=2, finished=True)
    assert writer.close()

    assert write_batch(engine, [stale_running, stale_retrying]) == []
    found = plain_job(engine, job_id)
    assert (found["status"], found["attempts"], found["last_error"]) == ("succeeded", 2, None)
    assert found["finished_at"] is not None


def test_a_queued_write_landing_after_a_fast_worker_hides_none_of_its_progress(
        engine: Engine) -> None:
    """The producer publishes, then records "queued"; a worker may start (and finish) first,
    and its batched writes may reach the database after "queued" does."""
    job_id = new_id()
    queued_seq = next_seq()  # taken before the publish, as recovery.engine.producer.submit does
    worker = AuditWriter(engine, batcher=AuditBatcher(engine, interval_s=60))
    started(worker, job_id)
    worker.attempt(call(job_id, 1, http_status=200))
    worker.job_status(job_id, "succeeded", attempts=1, last_status=200, finished=True)
    producer = AuditWriter(engine)
    assert producer.job_queued(job_id, "shop", "GET", "/x", {}, "k", seq=queued_seq)
    assert job_row(engine, job_id)["status"] == "queued"
    assert worker.close()
    found = plain_job(engine, job_id)
    assert (found["status"], found["attempts"]) == ("succeeded", 1)


def test_a_replay_requeues_a_finished_job_but_not_over_a_newer_write(engine: Engine) -> None:
    job_id = new_id()
    writer = AuditWriter(engine)
    queued_op = Op("job_queued", job_id, next_seq(), {
        "integration": "shop", "method": "GET", "path": "/", "params": {},
        "idempotency_key": "k", "now": utc_iso(T0), "replay_count": 1})
    writer.job_queued(job_id, "shop", "GET", "/", {}, "k")
    writer.job_status(job_id, "dead", finished=True)
    assert write_batch(engine, [queued_op]) == []  # written before the job died: no requeue
    assert (plain_job(engine, job_id)["status"], plain_job(engine, job_id)["replay_count"]) == (
        "dead", 1)

    writer.job_queued(job_id, "shop", "GET", "/", {}, "k", replay_count=2)
    assert plain_job(engine, job_id)["status"] == "queued"


def _ops_for(job_id: str, steps: list[str]) -> list[Op]:
    """A job's writes in the order they were made (increasing seq)."""
    writer_values = {"integration": "shop", "method": "GET", "path": "/", "params": {},
                     "idempotency_key": "k", "now": utc_iso(T0)}
    ops: list[Op] = []
    for number, step in enumerate(steps, start=1):
        if step == "started":
            ops.append(Op("job_started", job_id, next_seq(), {**writer_values, "attempt": number}))
        elif step == "attempt":
            ops.append(Op("attempt", job_id, next_seq(), {
                "number": number, "kind": "call", "started_at": utc_iso(T0), "duration_ms": 1,
                "http_status": 200, "error_categories": ["network"], "retryable": None,
                "error_message": None, "decision": "done", "delay_ms": None,
                "delay_source": None, "strategy": None, "worker": "w", "task_id": None,
                "dedupe_key": f"{job_id}-{number}"}))
        else:
            ops.append(Op("job_status", job_id, next_seq(), {
                "status": step, "now": utc_iso(T0), "attempts": number, "finished": False}))
    return ops


STEPS = st.lists(st.sampled_from(["started", "attempt", "retrying", "deferred", "succeeded"]),
                 min_size=1, max_size=12).map(lambda steps: ["started", *steps])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture])
@given(steps=STEPS, data=st.data())
def test_any_arrival_order_with_repeats_ends_like_the_order_of_writing(
        engine: Engine, steps: list[str], data: st.DataObject) -> None:
    job_id = new_id()
    ops = _ops_for(job_id, steps)
    arrival = data.draw(st.permutations(ops + data.draw(st.lists(st.sampled_from(ops),
                                                                 max_size=6))))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(arrival)), max_size=4)))
    waiting: list[Op] = []
    for start, end in zip([0, *cuts], [*cuts, len(arrival)], strict=False):
        waiting = write_batch(engine, waiting + arrival[start:end])
    assert write_batch(engine, waiting) == []

    last_job_write = [op for op in ops if op.kind != "attempt"][-1]
    expected_status = ("running" if last_job_write.kind == "job_started"
                       else last_job_write.values["status"])
    assert plain_job(engine, job_id)["status"] == expected_status
    assert len(attempt_rows(engine, job_id)) == steps.count("attempt")


def test_a_refused_op_is_dropped_and_logged_without_holding_back_the_batch(
        engine: Engine) -> None:
    job_id = new_id()
    good = _ops_for(job_id, ["started", "attempt", "succeeded"])
    bad = Op("job_status", job_id, next_seq(), {"status": "failed", "now": utc_iso(T0),
                                                "strategy": "x" * 500, "finished": True})
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite does not enforce VARCHAR lengths, so nothing is refused")
    with capture_logs() as logs:
        assert write_batch(engine, [*good[:2], bad, good[2]]) == []
    assert plain_job(engine, job_id)["status"] == "succeeded"
    assert len(attempt_rows(engine, job_id)) == 1
    assert [entry["event"] for entry in logs] == ["audit_op_rejected"]


def test_the_batcher_flushes_by_size_and_by_time(engine: Engine) -> None:
    job_id = new_id()
    batcher = AuditBatcher(engine, max_rows=5, interval_s=3600)
    writer = AuditWriter(engine, batcher=batcher)
    started(writer, job_id)
    for number in range(1, 5):
        writer.attempt(call(job_id, number))
    _wait_for(lambda: len(attempt_rows(engine, job_id)) == 4, "the size trigger")
    batcher.close()

    timed_id = new_id()
    timed = AuditWriter(engine, batcher=AuditBatcher(engine, interval_s=0.05))
    started(timed, timed_id)
    _wait_for(lambda: job_row(engine, timed_id) is not None, "the time trigger")
    timed.close()


def _wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"nothing was written by {what}"
        time.sleep(0.02)


def test_ops_go_to_the_spool_while_the_database_is_away_and_drain_in_order(
        engine: Engine, dead_engine: Engine, spool: RedisSpool,
        redis_client: redis.Redis) -> None:
    job_id = new_id()
    offline = AuditWriter(dead_engine, batcher=AuditBatcher(dead_engine, spool, interval_s=60))
    with capture_logs() as logs:
        scenario(offline, job_id)
        assert offline.close()
    assert "audit_database_unavailable" in [entry["event"] for entry in logs]
    assert spool.length() >= 1
    assert b"hunter2" not in b"".join(
        fields[b"ops"] for _, fields in redis_client.xrange(spool.key))

    later_id = new_id()
    online = AuditWriter(engine, batcher=AuditBatcher(engine, spool, interval_s=60))
    started(online, later_id)  # joins the stream's tail, behind the backlog
    assert online.flush()
    online.close()
    assert spool.length() == 0
    assert plain_job(engine, job_id)["status"] == "succeeded"
    assert len(attempt_rows(engine, job_id)) == 3
    assert plain_job(engine, later_id)["status"] == "running"


def _entries(spool: RedisSpool, count: int, ops_each: int) -> list[list[Op]]:
    """`count` spool entries of `ops_each` attempt ops, as one task's commit each makes."""
    made = []
    for _ in range(count):
        ops = [Op("attempt", new_id(), next_seq(), {"n": n}) for n in range(ops_each)]
        spool.append(ops)
        made.append(ops)
    return made


def test_a_drain_pass_stops_at_a_short_read_instead_of_chasing_new_entries(
        spool: RedisSpool) -> None:
    waiting = _entries(spool, 4, 3)
    batches: list[list[Op]] = []

    def write(ops: list[Op]) -> list[Op]:
        batches.append(ops)
        _entries(spool, 1, 3)  # workers keep committing while the batch is written
        return []

    drained = spool.drain(write, max_ops=2000, budget_s=30)
    assert (drained.written, drained.error) == (12, None)
    assert batches == [[op for ops in waiting for op in ops]]  # one transaction, in order
    assert spool.length() == 1  # the newcomer waits for the next pass


def test_a_backlog_drains_in_full_batches_until_a_short_one(spool: RedisSpool) -> None:
    waiting = _entries(spool, 5, 3)
    batches: list[list[Op]] = []
    drained = spool.drain(lambda ops: batches.append(ops) or [], max_ops=6, budget_s=30)
    assert drained.written == 15 and spool.length() == 0
    assert len(batches) == 3 and all(len(batch) <= 6 for batch in batches)
    assert [op for batch in batches for op in batch] == [op for ops in waiting for op in ops]


def test_a_drain_through_a_backlog_keeps_the_buffer_moving(
        engine: Engine, spool: RedisSpool, monkeypatch: pytest.MonkeyPatch) -> None:
    collected = _Collect()
    template = AuditWriter(engine, batcher=collected)  # type: ignore[arg-type]
    for _ in range(2500):  # more than one drain batch (2,000 ops)
        started(template, new_id())
    spool.append(collected.ops)
    batcher = AuditBatcher(engine, spool, interval_s=3600, max_buffer=50)
    writer = AuditWriter(engine, batcher=batcher)
    real_write = spool_module.write_batch
    bursts = [new_id() for _ in range(80)]

    def write_while_a_burst_arrives(target: Engine, ops: list[Op], *more: Any) -> list[Op]:
        for job_id in bursts[:40]:  # 40 writes during each of the first two batches
            started(writer, job_id)
        del bursts[:40]
        return real_write(target, ops, *more)

    monkeypatch.setattr(spool_module, "write_batch", write_while_a_burst_arrives)
    with capture_logs() as logs:
        assert batcher.flush()
        batcher.close()
    assert "audit_ops_dropped" not in [entry["event"] for entry in logs]
    assert batcher.counts["dropped"] == 0
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job.__table__)) >= 2580


KILLED_WORKER = """
import os, signal, sys
from datetime import UTC, datetime
import redis
from recovery.audit import db
from recovery.audit import AttemptRecord, AuditWriter
from recovery.audit.spool import AuditBatcher, RedisSpool

url, redis_url, prefix, job_id = sys.argv[1:]
engine = db.make_engine(url)
spool = RedisSpool(redis.Redis.from_url(redis_url), prefix)
writer = AuditWriter(engine, batcher=AuditBatcher(engine, spool, interval_s=3600))
writer.job_started(job_id, "shop", "GET", "/", {}, "k", 1)
writer.attempt(AttemptRecord(job_id=job_id, number=1, kind="call",
                             started_at=datetime.now(UTC), duration_ms=1, decision="done"))
writer.job_status(job_id, "succeeded", attempts=1, finished=True)
assert writer.commit()
writer.attempt(AttemptRecord(job_id=job_id, number=2, kind="call",
                             started_at=datetime.now(UTC), duration_ms=1, decision="done"))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_commit_made_durable_survives_a_sigkill(
        engine: Engine, spool: RedisSpool) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("the subprocess needs a database it can reach by URL")
    job_id = new_id()
    url = engine.url.render_as_string(hide_password=False)
    prefix = spool.key.removesuffix("audit:spool")
    done = subprocess.run([sys.executable, "-c", KILLED_WORKER, url, os.environ["REDIS_URL"],
                           prefix, job_id], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert job_row(engine, job_id) is None and spool.length() == 1

    drainer = AuditBatcher(engine, spool, interval_s=60)
    assert drainer.flush()
    drainer.close()
    assert plain_job(engine, job_id)["status"] == "succeeded"
    assert [a["number"] for a in attempt_rows(engine, job_id)] == [1]  # 2 was not committed


def test_a_direct_writer_spools_what_the_database_cannot_take(
        engine: Engine, dead_engine: Engine, spool: RedisSpool) -> None:
    job_id = new_id()
    producer = AuditWriter(dead_engine, spool=spool)
    assert producer.job_queued(job_id, "shop", "GET", "/", {}, "k")
    assert producer.breaker_transition("shop", "closed", "open", "x") is False
    assert spool.length() == 1
    drainer = AuditBatcher(engine, spool, interval_s=60)
    assert drainer.flush()
    assert spool.length() == 0 and plain_job(engine, job_id)["status"] == "queued"
    drainer.close()


def test_a_malformed_spool_entry_is_skipped_and_removed(
        engine: Engine, spool: RedisSpool, redis_client: redis.Redis) -> None:
    job_id = new_id()
    redis_client.xadd(spool.key, {"ops": b"{not json"})
    spool.append(_ops_for(job_id, ["started"]))
    batcher = AuditBatcher(engine, spool, interval_s=60)
    with capture_logs() as logs:
        assert batcher.flush()
    assert "audit_spool_entry_skipped" in [entry["event"] for entry in logs]
    assert spool.length() == 0 and plain_job(engine, job_id)["status"] == "running"
    batcher.close()


def test_an_orphan_waits_for_its_job_row_then_is_written(engine: Engine) -> None:
    job_id = new_id()
    batcher = AuditBatcher(engine, interval_s=60)
    writer = AuditWriter(engine, batcher=batcher)
    writer.attempt(call(job_id, 1))
    assert batcher.flush() and batcher.buffered() == 1
    AuditWriter(engine).job_started(job_id, "shop", "GET", "/", {}, "k", 1)
    assert batcher.flush() and batcher.buffered() == 0
    assert len(attempt_rows(engine, job_id)) == 1

    stale = AuditBatcher(engine, interval_s=60, orphan_max_age_s=0)
    AuditWriter(engine, batcher=stale).attempt(call(new_id(), 1))
    with capture_logs() as logs:
        stale.flush()
    assert stale.buffered() == 0 and stale.counts["dropped"] == 1
    assert [entry["event"] for entry in logs] == ["audit_orphan_dropped"]


def test_without_database_or_redis_ops_wait_in_bounded_memory(
        engine: Engine, tmp_path: Path) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("needs a PostgreSQL database that appears later")
    name = f"t_{uuid.uuid4().hex}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    later = db.make_engine(url)
    dead_redis = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.5)
    batcher = AuditBatcher(later, RedisSpool(dead_redis, "nowhere:"), interval_s=60,
                           max_buffer=4)
    writer = AuditWriter(later, batcher=batcher)
    job_id = new_id()
    try:
        with capture_logs() as logs:
            for number in range(1, 7):
                writer.attempt(call(job_id, number))
            started(writer, job_id)
            assert batcher.flush(timeout_s=0.5) is False
        events = {entry["event"] for entry in logs}
        assert {"audit_ops_dropped", "audit_buffering_in_memory"} <= events
        assert batcher.buffered() == 4

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        db.upgrade(url)
        assert batcher.flush()
        assert [a["number"] for a in attempt_rows(later, job_id)] == [4, 5, 6]
    finally:
        batcher.close(timeout_s=1)
        later.dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_make_audit_writer_batches_only_where_enabled(
        engine: Engine, redis_client: redis.Redis) -> None:
    assert make_audit_writer(engine, redis_client, "p:").batcher is None
    enable_batching()
    try:
        writer = make_audit_writer(engine, redis_client, "p:")
        assert writer.batcher is not None
        writer.close()
    finally:
        enable_batching(False)
