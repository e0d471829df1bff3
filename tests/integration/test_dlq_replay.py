"""The replay engine against real Redis and PostgreSQL (no worker: the work queue is read)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from structlog.testing import capture_logs

from recovery.audit.queries import get_job
from recovery.dlq import replay as replay_module
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.dlq.store import DlqBusyError, DlqLock, EntryFilter, QueueList
from recovery.engine.runtime import Runtime
from tests.integration.test_dlq_support import (
    bodies,
    dlq_ids,
    dlq_runtime,
    key,
    kombu_message,
    make_envelope,
    park_all,
    raw_list,
    work_jobs,
)

__all__ = ["dlq_runtime"]


def dead_letter_state(rt: Runtime, job_id: str) -> str:
    from sqlalchemy import text

    with rt.engine.connect() as conn:
        return str(conn.execute(text("SELECT state FROM dead_letters WHERE job_id = :id"),
                                {"id": job_id}).scalar_one())


def test_replay_requeues_the_original_jobs_in_order_and_records_it(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    parked = park_all([make_envelope() for _ in range(3)], dlq_runtime)
    report = replay_dlq(dlq_runtime, ReplayOptions())
    assert report.summary()["replayed"] == 3 and report.exit_code == 0
    assert dlq_ids(redis_client, dlq_runtime) == []
    jobs = work_jobs(redis_client, dlq_runtime)
    assert [job["job_id"] for job in jobs] == [e.job_id for e in parked]
    assert [job["idempotency_key"] for job in jobs] == [e.idempotency_key for e in parked]
    assert all(job["replay_count"] == 1 for job in jobs)
    assert jobs[0]["json"] == {"n": 1} and jobs[0]["headers"] == {"X-Team": "blue"}
    for envelope in parked:
        row = get_job(dlq_runtime.engine, envelope.job_id)
        assert row is not None
        assert (row["status"], row["replay_count"]) == ("queued", 1)
        assert dead_letter_state(dlq_runtime, envelope.job_id) == "replayed"


def test_filters_replay_only_matches_and_leave_the_rest_untouched_in_order(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    old = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    parked = park_all([
        make_envelope("shop"), make_envelope("crm"), make_envelope("shop", dead_at=old),
        make_envelope("crm", categories=("rate_limit",)), make_envelope("shop"),
    ])
    untouched = [raw for raw in raw_list(redis_client, dlq_runtime, "dlq")]
    since = datetime.now(UTC) - timedelta(hours=1)
    flt = EntryFilter(integration="shop", error_class="server_error", since=since)
    report = replay_dlq(dlq_runtime, ReplayOptions(filter=flt))
    assert report.summary()["replayed"] == 2
    moved = [parked[0].job_id, parked[4].job_id]
    assert [job["job_id"] for job in work_jobs(redis_client, dlq_runtime)] == moved
    assert raw_list(redis_client, dlq_runtime, "dlq") == [untouched[1], untouched[2],
                                                          untouched[3]]
    replay_dlq(dlq_runtime, ReplayOptions(filter=EntryFilter(error_class="rate_limit")))
    assert dlq_ids(redis_client, dlq_runtime) == [parked[1].job_id, parked[2].job_id]
    replay_dlq(dlq_runtime, ReplayOptions(filter=EntryFilter(job_id=parked[2].job_id)))
    assert dlq_ids(redis_client, dlq_runtime) == [parked[1].job_id]


def test_limit_replays_the_oldest_n_and_keeps_the_rest(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    parked = park_all([make_envelope() for _ in range(10)])
    report = replay_dlq(dlq_runtime, ReplayOptions(limit=4))
    assert report.summary()["replayed"] == 4
    assert [job["job_id"] for job in work_jobs(redis_client, dlq_runtime)] == [
        e.job_id for e in parked[:4]]
    assert dlq_ids(redis_client, dlq_runtime) == [e.job_id for e in parked[4:]]


def test_rate_200_makes_1000_entries_take_at_least_5_seconds(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    park_all([make_envelope() for _ in range(1000)])
    started = time.monotonic()
    report = replay_dlq(dlq_runtime, ReplayOptions(rate=200))
    elapsed = time.monotonic() - started
    assert report.summary()["replayed"] == 1000
    assert len(work_jobs(redis_client, dlq_runtime)) == 1000
    assert elapsed >= 5.0


def test_dry_run_changes_nothing_and_explains_each_entry(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    parked = park_all([make_envelope("shop"), make_envelope("crm"),
                       make_envelope("shop", replay_count=3)], dlq_runtime)
    redis_client.lpush(key(dlq_runtime, "dlq"), b"not json at all")
    dlq_runtime.breaker(dlq_runtime.registry.get("crm")).force_open("test")
    before = raw_list(redis_client, dlq_runtime, "dlq")
    report = replay_dlq(dlq_runtime, ReplayOptions(dry_run=True))
    assert [(item.job_id, item.action, item.cause) for item in report.items] == [
        (parked[0].job_id, "replay", "replay"),
        (parked[1].job_id, "skip", "breaker-open"),
        (parked[2].job_id, "quarantine", "replay-cap"),
        (None, "quarantine", "malformed"),
    ]
    assert "breaker still open" in report.items[1].reason
    assert "replay cap reached" in report.items[2].reason
    assert raw_list(redis_client, dlq_runtime, "dlq") == before
    assert work_jobs(redis_client, dlq_runtime) == []
    assert raw_list(redis_client, dlq_runtime, "dlq.quarantine") == []
    assert dead_letter_state(dlq_runtime, parked[0].job_id) == "parked"
    job = get_job(dlq_runtime.engine, parked[0].job_id)
    assert job is not None and job["status"] == "dead"


def test_open_breaker_entries_are_skipped_and_stay(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    parked = park_all([make_envelope("crm"), make_envelope("shop")])
    dlq_runtime.breaker(dlq_runtime.registry.get("crm")).force_open("test")
    report = replay_dlq(dlq_runtime, ReplayOptions())
    assert report.summary() == {"dry_run": False, "replayed": 1, "skipped": 1,
                                "quarantined": 0, "failed": 0, "errors": []}
    assert dlq_ids(redis_client, dlq_runtime) == [parked[0].job_id]


def test_replay_cap_moves_to_quarantine_with_an_alert(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    capped, fresh = park_all([make_envelope(replay_count=3), make_envelope(replay_count=2)],
                             dlq_runtime)
    with capture_logs() as logs:
        report = replay_dlq(dlq_runtime, ReplayOptions())
    assert report.summary()["quarantined"] == 1 and report.summary()["replayed"] == 1
    assert [job["job_id"] for job in work_jobs(redis_client, dlq_runtime)] == [fresh.job_id]
    assert [job["replay_count"] for job in work_jobs(redis_client, dlq_runtime)] == [3]
    records = bodies(redis_client, dlq_runtime, "dlq.quarantine")
    assert [r["job_id"] for r in records] == [capped.job_id]
    assert "replay cap reached" in records[0]["reason"]
    assert records[0]["envelope"]["idempotency_key"] == capped.idempotency_key
    alerts = [e for e in logs if e["event"] == "alert_dlq_replay_cap_reached"]
    assert len(alerts) == 1 and alerts[0]["log_level"] == "error"
    assert dead_letter_state(dlq_runtime, capped.job_id) == "quarantined"


def test_malformed_entries_are_quarantined_and_never_crash_a_replay(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    good = park_all([make_envelope()])[0]
    dlq_key = key(dlq_runtime, "dlq")
    wrong_type = make_envelope().sealed_message() | {"replay_count": "many"}
    import json

    for raw in (b"\xff\xfe garbage", kombu_message("{broken json"),
                kombu_message('{"hello": "world"}', base64_body=True),
                kombu_message(json.dumps(wrong_type))):
        redis_client.lpush(dlq_key, raw)
    report = replay_dlq(dlq_runtime, ReplayOptions(filter=EntryFilter(integration="crm")))
    assert report.summary()["quarantined"] == 4 and report.exit_code == 0
    assert dlq_ids(redis_client, dlq_runtime) == [good.job_id]
    reasons = [r["reason"] for r in bodies(redis_client, dlq_runtime, "dlq.quarantine")]
    assert [reason.split(":")[0] for reason in reasons] == ["malformed"] * 4
    assert "not JSON" in reasons[0] and "broken JSON" in reasons[1]
    assert "not a dead-letter envelope" in reasons[2] and "replay_count" in reasons[3]


def test_a_failed_publish_leaves_entries_in_the_dlq_and_reverts_the_audit(
        dlq_runtime: Runtime, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    parked = park_all([make_envelope() for _ in range(3)], dlq_runtime)

    def broker_down(jobs: object) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(replay_module, "publish_jobs", broker_down)
    report = replay_dlq(dlq_runtime, ReplayOptions())
    assert report.exit_code == 1 and report.summary()["failed"] == 3
    assert dlq_ids(redis_client, dlq_runtime) == [e.job_id for e in parked]
    job = get_job(dlq_runtime.engine, parked[0].job_id)
    assert job is not None and (job["status"], job["replay_count"]) == ("dead", 0)
    assert dead_letter_state(dlq_runtime, parked[0].job_id) == "parked"


def test_a_crash_after_publishing_leaves_a_harmless_duplicate_not_a_loss(
        dlq_runtime: Runtime, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    parked = park_all([make_envelope() for _ in range(2)])

    def crash(self: QueueList, raws: list[bytes]) -> int:
        raise KeyboardInterrupt("the replay process died")

    monkeypatch.setattr(QueueList, "remove_many", crash)
    with pytest.raises(KeyboardInterrupt):
        replay_dlq(dlq_runtime, ReplayOptions())
    monkeypatch.undo()
    assert dlq_ids(redis_client, dlq_runtime) == [e.job_id for e in parked]
    replay_dlq(dlq_runtime, ReplayOptions())
    keys = [job["idempotency_key"] for job in work_jobs(redis_client, dlq_runtime)]
    assert keys == [e.idempotency_key for e in parked] * 2
    assert dlq_ids(redis_client, dlq_runtime) == []


def test_a_second_run_is_refused_while_one_holds_the_dlq(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    park_all([make_envelope()])
    with DlqLock(redis_client, dlq_runtime.settings.redis_key_prefix, "other-operator"), \
            pytest.raises(DlqBusyError, match="other-operator"):
        replay_dlq(dlq_runtime, ReplayOptions())
    assert replay_dlq(dlq_runtime, ReplayOptions()).summary()["replayed"] == 1


def test_scheduled_task_is_capped_and_respects_the_switches(
        dlq_runtime: Runtime, redis_client: redis.Redis, configure) -> None:
    from recovery.engine.runtime import get_runtime
    from tasks.dlq import replay

    park_all([make_envelope("crm"), *[make_envelope() for _ in range(4)]])
    dlq_runtime.breaker(dlq_runtime.registry.get("crm")).force_open("test")
    result = replay.run(limit=2)
    assert (result["status"], result["replayed"], result["skipped"]) == ("done", 2, 1)
    assert len(dlq_ids(redis_client, dlq_runtime)) == 3
    configure(ENABLE_AUTO_RECOVERY="false")
    assert replay.run()["status"] == "disabled"
    assert len(dlq_ids(redis_client, get_runtime())) == 3


REPLAY_SCRIPT = ("from recovery.dlq.replay import ReplayOptions, replay_dlq; "
                 "from recovery.engine.runtime import get_runtime; "
                 "replay_dlq(get_runtime(), ReplayOptions(rate=100))")


def test_kill_9_halfway_through_a_replay_loses_nothing(
        configure, redis_client: redis.Redis) -> None:
    import os
    import signal
    import subprocess
    import sys

    from recovery.engine.runtime import get_runtime
    from tests.integration.conftest import REPO
    from tests.integration.test_dlq_support import integration_entry

    env = configure([integration_entry("shop")])
    rt = get_runtime()
    parked = park_all([make_envelope() for _ in range(300)])
    process = subprocess.Popen([sys.executable, "-c", REPLAY_SCRIPT], env=env, cwd=REPO)
    deadline = time.monotonic() + 30
    while len(work_jobs(redis_client, rt)) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    in_dlq, queued = dlq_ids(redis_client, rt), [j["job_id"] for j in work_jobs(redis_client, rt)]
    assert 50 <= len(queued) < 300
    assert set(in_dlq) | set(queued) == {e.job_id for e in parked}
    assert in_dlq == [e.job_id for e in parked if e.job_id in set(in_dlq)]
    redis_client.delete(f"{rt.settings.redis_key_prefix}dlq:lock")  # as if its TTL had run out
    replay_dlq(rt, ReplayOptions())
    finished = [j["job_id"] for j in work_jobs(redis_client, rt)]
    assert dlq_ids(redis_client, rt) == [] and set(finished) == {e.job_id for e in parked}
    # Duplicates (harmless: same idempotency keys) come at most from the one batch of ten
    # (a tenth of a second at --rate 100) that was published but not yet removed.
    assert len(finished) - len(set(finished)) <= 10
