"""The audit spool keeps what PostgreSQL could not take for a reason that passes, drops only rows
that can never be written (to a capped stream, with an alert), and is capped itself, with an
alert at 80 % and at the first trim (issue 11 items 4 and 5). Real PostgreSQL, real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine, func, select
from structlog.testing import capture_logs

from recovery.audit import AuditWriter, db
from recovery.audit.models import Attempt, Job
from recovery.audit.spool import AuditBatcher, RedisSpool
from recovery.audit.sql import Op, next_seq, utc_iso
from recovery.telemetry.alerts import Alerter, set_alerter
from tests.integration._db import PG_ADMIN_URL, postgres_database
from tests.integration.test_audit_batch import T0, new_id, scenario

pytestmark = pytest.mark.integration

JOBS = 4
ATTEMPTS_PER_JOB = 3  # scenario(): a retry, a deferral, a success


@pytest.fixture(autouse=True)
def quiet_alerter() -> Iterator[None]:
    """Alerts go to the log only (captured by the tests), not to a runtime's audit trail."""
    set_alerter(Alerter(service="test", audit=lambda: None))
    yield
    set_alerter(None)


@pytest.fixture
def spool(redis_client: redis.Redis) -> RedisSpool:
    return RedisSpool(redis_client, f"{os.environ['RECOVERY_REDIS_PREFIX']}{uuid.uuid4().hex}:")


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """(URL, name) of a fresh migrated PostgreSQL database."""
    with postgres_database() as url:
        db.upgrade(url)
        yield url, url.rsplit("/", 1)[1]


def admin(sql: str, dbname: str | None = None) -> None:
    target = PG_ADMIN_URL if dbname is None else PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}"
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(sql)


def reconnect_all(dbname: str) -> None:
    """End every session on the database, as a failover does: pools reconnect (pre-ping)."""
    admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
          f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()")


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        jobs = conn.scalar(select(func.count()).select_from(Job.__table__))
        attempts = conn.scalar(select(func.count()).select_from(Attempt.__table__))
    return int(jobs or 0), int(attempts or 0)


def statuses(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(select(Job.__table__.c.status)))


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [entry["event"] for entry in logs]


def write_while_refused(writer: AuditWriter, spool: RedisSpool) -> list[dict[str, Any]]:
    """Every job's writes, then a flush the database refuses; returns the logs."""
    with capture_logs() as logs:
        for _ in range(JOBS):
            scenario(writer, new_id())
        assert not writer.flush(timeout_s=1.0)
    assert spool.length() >= 1
    assert "audit_op_rejected" not in events(logs) and "audit_ops_dropped" not in events(logs)
    return logs


def assert_every_row_landed_once(writer: AuditWriter, engine: Engine,
                                 spool: RedisSpool) -> None:
    assert writer.flush(timeout_s=20.0)
    assert writer.close()
    assert spool.length() == 0 and spool.rejected.read() == []
    assert counts(engine) == (JOBS, JOBS * ATTEMPTS_PER_JOB)
    assert statuses(engine) == ["succeeded"] * JOBS


def test_a_read_only_database_keeps_every_row_until_it_takes_writes_again(
        database: tuple[str, str], spool: RedisSpool) -> None:
    url, name = database
    engine = db.make_engine(url)
    admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    reconnect_all(name)
    writer = AuditWriter(engine, batcher=AuditBatcher(engine, spool, interval_s=3600))
    logs = write_while_refused(writer, spool)
    refused = [entry for entry in logs if entry["event"] == "audit_database_refused"]
    assert refused and refused[0]["sqlstate"] == "25006"
    assert counts(engine) == (0, 0)

    admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
    reconnect_all(name)
    assert_every_row_landed_once(writer, engine, spool)
    engine.dispose()


def test_a_revoked_insert_privilege_keeps_every_row_until_it_is_granted(
        database: tuple[str, str], spool: RedisSpool) -> None:
    url, name = database
    role = f"r_{uuid.uuid4().hex[:12]}"
    admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        admin(f'GRANT USAGE ON SCHEMA public TO "{role}"; '
              f'GRANT SELECT ON jobs, attempts TO "{role}"', name)
        engine = db.make_engine(url.replace("postgres@", f"{role}@", 1))
        writer = AuditWriter(engine, batcher=AuditBatcher(engine, spool, interval_s=3600))
        logs = write_while_refused(writer, spool)
        refused = [entry for entry in logs if entry["event"] == "audit_database_refused"]
        assert refused and refused[0]["sqlstate"] == "42501"
        assert counts(engine) == (0, 0)

        admin(f'GRANT INSERT, UPDATE ON jobs, attempts TO "{role}"; '
              f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"', name)
        assert_every_row_landed_once(writer, engine, spool)
        engine.dispose()
    finally:
        admin(f'DROP OWNED BY "{role}"', name)
        reconnect_all(name)
        admin(f'DROP ROLE IF EXISTS "{role}"')


def test_a_missing_table_keeps_the_rows_until_the_migration_made_it(
        database: tuple[str, str], spool: RedisSpool) -> None:
    url, name = database
    engine = db.make_engine(url)
    admin("ALTER TABLE attempts RENAME TO attempts_moved", name)
    writer = AuditWriter(engine, batcher=AuditBatcher(engine, spool, interval_s=3600))
    logs = write_while_refused(writer, spool)
    refused = [entry for entry in logs if entry["event"] == "audit_database_refused"]
    assert refused and refused[0]["sqlstate"] == "42P01"
    admin("ALTER TABLE attempts_moved RENAME TO attempts", name)
    assert_every_row_landed_once(writer, engine, spool)
    engine.dispose()


def test_a_row_with_bad_data_goes_to_the_rejected_stream_with_an_alert_and_the_rest_lands(
        database: tuple[str, str], spool: RedisSpool) -> None:
    url, _ = database
    engine = db.make_engine(url)
    writer = AuditWriter(engine, batcher=AuditBatcher(engine, spool, interval_s=3600))
    job_id = new_id()
    with capture_logs() as logs:
        scenario(writer, job_id)
        bad = Op("job_status", job_id, next_seq(), {"status": "failed", "now": utc_iso(T0),
                                                    "strategy": "x" * 500, "finished": True})
        assert writer.batcher is not None
        writer.batcher.submit(bad)
        for _ in range(JOBS - 1):
            scenario(writer, new_id())
        assert writer.flush(timeout_s=20.0)
        writer.close()
    assert counts(engine) == (JOBS, JOBS * ATTEMPTS_PER_JOB)
    assert statuses(engine) == ["succeeded"] * JOBS  # the bad "failed" never landed
    assert spool.length() == 0
    kept = spool.rejected.read()
    assert len(kept) == 1, events(logs)
    assert Op.from_json(kept[0]["op"]) == bad
    assert kept[0]["sqlstate"] == "22001" and "too long" in kept[0]["error"]
    alerts = [entry for entry in logs if entry["event"] == "alert_audit_rows_rejected"]
    assert len(alerts) == 1 and alerts[0]["count"] == 1
    assert spool.rejected.key in alerts[0]["alert_message"]
    engine.dispose()


def test_the_rejected_stream_is_capped(spool: RedisSpool, redis_client: redis.Redis) -> None:
    from recovery.audit.sql import Rejected

    spool.rejected.max_entries = 100
    bad = Op("attempt", "j", 1, {"n": 1})
    with capture_logs():
        for _ in range(30):
            spool.rejected.put([Rejected(bad, "value too long", "22001")] * 10)
    assert 100 <= redis_client.xlen(spool.rejected.key) < 300  # approximate trimming


def append_entries(spool: RedisSpool, count: int) -> None:
    for _ in range(count):
        spool.append([Op("attempt", new_id(), next_seq(), {"n": 1})])


def test_the_spool_is_capped_and_alerts_once_at_80_percent_and_once_at_the_first_trim(
        spool: RedisSpool, redis_client: redis.Redis) -> None:
    capped = RedisSpool(redis_client, spool.key.removesuffix("audit:spool"), max_entries=10)
    with capture_logs() as logs:
        append_entries(capped, 7)
    assert [e for e in events(logs) if e.startswith("alert_")] == []
    with capture_logs() as logs:
        append_entries(capped, 3)  # 8 of 10: crossing 80 %, reported once
    assert [e for e in events(logs) if e.startswith("alert_")] == ["alert_audit_spool_filling"]
    oldest = redis_client.xrange(capped.key, count=1)[0][0]
    with capture_logs() as logs:
        append_entries(capped, 5)  # 3 trimmed, the first one alerted; the log counts them all
    assert [e for e in events(logs) if e.startswith("alert_")] == ["alert_audit_spool_trimmed"]
    trims = [entry for entry in logs if entry["event"] == "audit_spool_trimmed"]
    assert trims and trims[0]["trimmed_total"] >= 1
    assert capped.length() == 10 and capped.alarm.trimmed == 5
    assert redis_client.xrange(capped.key, count=1)[0][0] != oldest

    ids = [entry_id for entry_id, _ in redis_client.xrange(capped.key)]
    redis_client.xdel(capped.key, *ids[:5])  # a drain took half of it: below 70 %
    with capture_logs() as logs:
        append_entries(capped, 1)
    assert not redis_client.exists(capped.alarm_key)
    with capture_logs() as logs:
        append_entries(capped, 2)  # 8 again: a new crossing, reported again
    assert [e for e in events(logs) if e.startswith("alert_")] == ["alert_audit_spool_filling"]
    assert 0 < redis_client.ttl(capped.alarm_key) <= 24 * 3600


def test_a_settle_round_trip_reports_the_spool_crossing_too(
        spool: RedisSpool, redis_client: redis.Redis) -> None:
    """The append that rides on `Gate.settle` (`append_call`) runs the same capped script and
    hands its reply to the same alarm."""
    from recovery.engine.gate import Gate
    from recovery.state.breaker import ClusterBreaker
    from recovery.state.budget import RetryBudget
    from recovery.state.idempotency import IdempotencyStore
    from recovery.state.ratelimit import ClusterRateLimiter
    from tests.integration.test_gate import make_integration

    prefix = spool.key.removesuffix("audit:spool")
    capped = RedisSpool(redis_client, prefix, max_entries=10)
    append_entries(capped, 7)
    shop = make_integration()
    breaker = ClusterBreaker(redis_client, shop.id, shop.circuit_breaker, key_prefix=prefix)
    gate = Gate(redis_client, IdempotencyStore(redis_client, key_prefix=prefix),
                ClusterRateLimiter(redis_client, key_prefix=prefix),
                RetryBudget(redis_client, key_prefix=prefix), lambda _: breaker)
    passage = gate.enter(shop, "k", "job-1", 10_000, "job-1:0:1:0", first_attempt=True,
                         budget_pending=False, max_deliveries=3)
    audit = capped.append_call([Op("attempt", new_id(), next_seq(), {"n": 1})])
    with capture_logs() as logs:
        assert gate.settle(shop, passage.permit, "k", "job-1", "job-1", success=True,
                           counts=True, audit=audit)
    gate.close()
    assert capped.length() == 8
    assert [e for e in events(logs) if e.startswith("alert_")] == ["alert_audit_spool_filling"]
    assert "audit_spool_alarm_failed" not in events(logs)


def test_a_producer_write_refused_by_a_read_only_database_waits_in_the_spool(
        database: tuple[str, str], spool: RedisSpool) -> None:
    """Producers write at once (no batcher): a refusal that passes spools the row, and a
    worker's drain writes it when the database takes writes again."""
    url, name = database
    engine = db.make_engine(url)
    admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    reconnect_all(name)
    producer = AuditWriter(engine, spool=spool)
    job_id = new_id()
    with capture_logs() as logs:
        assert producer.job_queued(job_id, "shop", "POST", "/orders", {}, "k")
    assert "audit_spooled" in events(logs) and "audit_write_failed" not in events(logs)
    assert spool.length() == 1

    admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
    reconnect_all(name)
    worker = AuditWriter(engine, batcher=AuditBatcher(engine, spool, interval_s=3600))
    assert worker.flush(timeout_s=20.0)
    worker.close()
    assert statuses(engine) == ["queued"] and spool.length() == 0
    engine.dispose()


def test_a_producer_write_with_bad_data_goes_to_the_rejected_stream(
        database: tuple[str, str], spool: RedisSpool) -> None:
    url, _ = database
    engine = db.make_engine(url)
    producer = AuditWriter(engine, spool=spool)
    with capture_logs() as logs:
        assert not producer.job_queued(new_id(), "shop", "POST" * 10, "/orders", {}, "k")
    assert spool.length() == 0 and counts(engine) == (0, 0)
    kept = spool.rejected.read()
    assert len(kept) == 1 and kept[0]["sqlstate"] == "22001"
    assert Op.from_json(kept[0]["op"]).values["method"] == "POST" * 10
    assert "alert_audit_rows_rejected" in events(logs)
    engine.dispose()


def test_one_drainer_at_a_time_and_a_drain_never_frees_another_drainers_lock(
        spool: RedisSpool, redis_client: redis.Redis) -> None:
    append_entries(spool, 3)
    redis_client.set(spool.lock_key, "other-drainer", px=60_000)
    seen: list[Op] = []

    def write(ops: list[Op]) -> list[Op]:
        seen.extend(ops)
        return []

    busy = spool.drain(write)
    assert (busy.written, busy.orphans, busy.error, seen) == (0, [], None, [])
    assert redis_client.xlen(spool.key) == 3
    assert redis_client.get(spool.lock_key) == b"other-drainer"  # untouched

    redis_client.delete(spool.lock_key)
    done = spool.drain(write)
    assert (done.written, done.error, len(seen)) == (3, None, 3)
    assert redis_client.xlen(spool.key) == 0
    assert redis_client.exists(spool.lock_key) == 0  # released after the pass


def test_a_drain_whose_lock_expired_stops_and_leaves_the_new_holders_lock(
        spool: RedisSpool, redis_client: redis.Redis) -> None:
    append_entries(spool, 2)

    def write(ops: list[Op]) -> list[Op]:  # meanwhile the lock expired and another took it
        redis_client.set(spool.lock_key, "next-drainer", px=60_000)
        return []

    with capture_logs() as logs:
        drained = spool.drain(write, max_ops=1)
    assert (drained.written, drained.error) == (1, None)
    assert "audit_spool_lock_lost" in events(logs)
    assert redis_client.get(spool.lock_key) == b"next-drainer"
    assert redis_client.xlen(spool.key) == 1  # the rest waits for the lock's holder
