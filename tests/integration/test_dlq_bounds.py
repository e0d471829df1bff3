"""One pass per replay run, what auto-replay leaves alone, and the DLQ cap with its archive."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import text
from structlog.testing import capture_logs

import recovery
from recovery.core.crypto import Cipher
from recovery.core.message import JobSpec, Progress, new_job_id, utc_now_iso
from recovery.core.step import Step
from recovery.demo.faultserver import FaultServer
from recovery.dlq.cap import enforce_cap
from recovery.dlq.envelope import Envelope, envelope_for
from recovery.dlq.park import park, publish
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.engine.outcome import mark_dead, park_dead
from recovery.engine.runtime import Runtime, get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.test_dlq_original import ONE_TRY
from tests.integration.test_dlq_support import bodies, dlq_ids, integration_entry
from tests.integration.test_job_flow import integration

FINAL = {"succeeded", "failed", "dead", "degraded"}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


def test_one_run_replays_each_entry_once_and_leaves_new_dead_letters_for_the_next(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    env = configure([integration(upstream.url, retry=ONE_TRY)])
    upstream.set_mode("5xx", status=500)
    start_worker(env)
    rt = get_runtime()
    ids = [recovery.enqueue("shop", "POST", "/orders", json={"n": n}) for n in range(8)]
    for job_id in ids:
        assert wait_for_status(rt.engine, job_id, FINAL)["status"] == "dead"
    wait_until(lambda: len(dlq_ids(redis_client, rt)) == 8, "8 dead letters")

    back_during_run: list[int] = []

    def progress(_: int) -> None:
        again = [b for b in bodies(redis_client, rt, "dlq") if b["replay_count"] == 1]
        back_during_run.append(len(again))

    report = replay_dlq(rt, ReplayOptions(rate=4), on_progress=progress)
    assert report.summary() == {"dry_run": False, "replayed": 8, "skipped": 0,
                                "quarantined": 0, "failed": 0, "errors": []}
    assert sorted(item.job_id or "" for item in report.items) == sorted(ids)
    assert len(back_during_run) == 8 and max(back_during_run) >= 1  # they were there, untouched
    wait_until(lambda: sorted(dlq_ids(redis_client, rt)) == sorted(ids), "all 8 parked again")
    assert {b["replay_count"] for b in bodies(redis_client, rt, "dlq")} == {1}


def dead(integration_id: str = "shop", *, categories: tuple[str, ...] = ("server_error",),
         message: str = "HTTP 503", dead_at: str | None = None,
         cipher: Cipher | None = None) -> Envelope:
    job = JobSpec(job_id=new_job_id(), integration=integration_id, method="POST",
                  path="/orders", json={"password": "hunter2-b0dy", "n": 1},
                  idempotency_key=f"k-{new_job_id()}", enqueued_at=utc_now_iso())
    return envelope_for(job, categories=list(categories), last_status=None, message=message,
                        attempts=1, dead_at=dead_at or utc_now_iso(), cipher=cipher)


@pytest.fixture
def shop(configure: Callable[..., dict[str, str]],
         redis_client: redis.Redis) -> Callable[..., Runtime]:
    def apply(**env: str) -> Runtime:
        configure([integration_entry("shop")], **env)
        return get_runtime()
    return apply


def test_auto_replay_skips_client_errors_and_poison_unless_configured(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    from tasks.dlq import replay

    rt = shop()
    server, client, poison = (
        dead(), dead(categories=("client_error",), message="HTTP 400"),
        dead(categories=("unknown",), message="poison: the job was delivered 4 times and its "
             "worker died each time."))
    for envelope in (server, client, poison):
        publish(envelope)
    result = replay.run()
    assert (result["status"], result["replayed"], result["quarantined"]) == ("done", 1, 0)
    assert dlq_ids(redis_client, rt) == [client.job_id, poison.job_id]
    rt = shop(DLQ_AUTO_REPLAY_CLIENT_ERRORS="true")
    assert replay.run()["replayed"] == 1
    assert dlq_ids(redis_client, rt) == [poison.job_id]
    rt = shop(DLQ_AUTO_REPLAY_POISON="yes")
    assert replay.run()["replayed"] == 1
    assert dlq_ids(redis_client, rt) == []


def archive_rows(rt: Runtime) -> list[dict[str, Any]]:
    with rt.engine.connect() as conn:
        rows = conn.execute(text("SELECT job_id, cause, envelope, original "
                                 "FROM dead_letter_archive ORDER BY id"))
        return [dict(row._mapping) for row in rows]


def park_jobs(rt: Runtime, count: int) -> list[str]:
    ids = []
    for n in range(count):
        job = JobSpec(job_id=new_job_id(), integration="shop", method="POST", path="/orders",
                      json={"password": "hunter2-b0dy", "n": n}, idempotency_key=f"key-{n}",
                      enqueued_at=utc_now_iso())
        rt.audit.job_queued(job.job_id, "shop", "POST", "/orders", None, job.idempotency_key)
        park_dead(rt, job, Step("dead", Progress(), 1,
                                 reason="HTTP 503: attempts exhausted"))
        ids.append(job.job_id)
    return ids


def test_cap_5_park_8_keeps_5_archives_3_and_alerts(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    rt = shop(DLQ_MAX_ENTRIES="5")
    with capture_logs() as logs:
        ids = park_jobs(rt, 8)
    assert dlq_ids(redis_client, rt) == ids[3:]
    rows = archive_rows(rt)
    assert [(row["job_id"], row["cause"]) for row in rows] == [(i, "count") for i in ids[:3]]
    assert all(row["original"] is None for row in rows)  # no key: the redacted copy only
    assert all("[REDACTED]" in str(row["envelope"]["body"]) for row in rows)
    assert "hunter2" not in str(rows)
    alerts = [e for e in logs if e["event"] == "alert_dlq_trimmed"]
    assert sum(e["archived"] for e in alerts) == 3 and alerts[0]["log_level"] == "error"
    assert "moved from the 'dlq' queue to the dead_letter_archive table" in \
        alerts[0]["alert_message"]
    with rt.engine.connect() as conn:
        states = dict(conn.execute(text("SELECT job_id, state FROM dead_letters")).all())
    assert [states[i] for i in ids] == ["purged"] * 3 + ["parked"] * 5


def test_with_a_key_the_archive_keeps_the_encrypted_original(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    rt = shop(DLQ_MAX_ENTRIES="1", RECOVERY_ENCRYPTION_KEYS=key)
    ids = park_jobs(rt, 2)
    [row] = archive_rows(rt)
    assert row["job_id"] == ids[0] and "hunter2" not in str(row)
    assert Cipher([key]).open_json(row["original"])["json"]["password"] == "hunter2-b0dy"


def test_entries_past_the_age_cap_are_archived_and_young_ones_stay(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    rt = shop(DLQ_MAX_AGE_DAYS="1")
    old_at = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    old = [dead(dead_at=old_at), dead(dead_at=old_at)]
    young = dead()
    for envelope in (*old, young):
        publish(envelope)
    report = enforce_cap(rt, "test")
    assert report is not None and (report.archived, report.by_age) == (2, 2)
    assert [(r["job_id"], r["cause"]) for r in archive_rows(rt)] == [
        (e.job_id, "age") for e in old]
    assert dlq_ids(redis_client, rt) == [young.job_id]
    assert enforce_cap(rt, "test") is None  # within the cap now: one round trip, nothing done


def test_when_postgresql_refuses_the_archive_nothing_leaves_redis_and_an_alert_says_so(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    rt = shop(DLQ_MAX_ENTRIES="1")
    with rt.engine.begin() as conn:
        conn.execute(text("DROP TABLE dead_letter_archive"))
    with capture_logs() as logs:
        ids = park_jobs(rt, 3)
    assert dlq_ids(redis_client, rt) == ids
    failed = [e for e in logs if e["event"] == "alert_dlq_trim_failed"]
    assert len(failed) == 1 and "stay in Redis" in failed[0]["alert_message"]  # not one a park
    assert 0 < redis_client.ttl(f"{rt.settings.redis_key_prefix}dlq:trim-failed") <= 60


def test_the_quarantine_is_capped_too_and_keeps_its_reasons_in_the_archive(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    from cryptography.fernet import Fernet

    from recovery.dlq.quarantine import QUARANTINE_QUEUE, QuarantineRecord, publish_record
    from recovery.dlq.store import decode_entry

    key = Fernet.generate_key().decode()
    rt = shop(DLQ_MAX_ENTRIES="2", RECOVERY_ENCRYPTION_KEYS=key)
    envelopes = [dead(cipher=Cipher([key])) for _ in range(4)]
    for envelope in envelopes:
        entry = decode_entry(json_message(envelope.sealed_message()))
        publish_record(QuarantineRecord.of(entry, "replay cap reached"))
    report = enforce_cap(rt, "test")
    assert report is not None and (report.archived, report.by_count) == (2, 2)
    assert report.queue == QUARANTINE_QUEUE
    rows = archive_rows(rt)
    assert [r["job_id"] for r in rows] == [e.job_id for e in envelopes[:2]]
    assert rows[0]["envelope"]["kind"] == "quarantined"
    assert rows[0]["envelope"]["reason"] == "replay cap reached"
    assert "hunter2" not in str(rows)
    assert Cipher([key]).open_json(rows[0]["original"])["json"]["password"] == "hunter2-b0dy"
    left = [b["job_id"] for b in bodies(redis_client, rt, QUARANTINE_QUEUE)]
    assert left == [e.job_id for e in envelopes[2:]]


def json_message(body: dict[str, Any]) -> bytes:
    """`body` as kombu would store it in a Redis list."""
    import json

    return json.dumps({"body": json.dumps(body), "content-type": "application/json",
                       "content-encoding": "utf-8", "properties": {}}).encode()


def test_park_records_the_dead_letter_and_the_outcome_writes_the_dead_status(
        shop: Callable[..., Runtime]) -> None:
    """`park` returns what it parked and leaves the job's status alone; the outcome module is
    the one writer of the final `dead` status."""
    rt = shop()
    job = JobSpec(job_id=new_job_id(), integration="shop", method="GET", path="/orders/9",
                  idempotency_key="key-9", enqueued_at=utc_now_iso())
    rt.audit.job_queued(job.job_id, "shop", "GET", "/orders/9", None, job.idempotency_key)
    step = Step("dead", Progress(), 3, reason="HTTP 503: attempts exhausted")
    kept: list[Envelope] = []
    envelope = park(rt, job, step, sink=kept.append)
    assert kept == [envelope] and envelope.job_id == job.job_id and envelope.attempts == 3
    rt.audit.flush()
    with rt.engine.connect() as conn:
        parked = conn.execute(text("SELECT state FROM dead_letters WHERE job_id = :j"),
                              {"j": job.job_id}).scalars().all()
    assert parked == ["parked"]
    assert wait_for_status(rt.engine, job.job_id, {"queued"}, timeout=5)["status"] == "queued"
    mark_dead(rt, job, step, envelope)
    row = wait_for_status(rt.engine, job.job_id, {"dead"}, timeout=10)
    assert (row["strategy"], row["outcome"]) == ("dead-letter-queue",
                                                 "HTTP 503: attempts exhausted")
