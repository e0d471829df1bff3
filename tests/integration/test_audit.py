"""The audit writer and queries against real PostgreSQL and a SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from recovery.audit import (
    AttemptRecord,
    AuditWriter,
    DeadLetterRecord,
    db,
    get_job,
    list_jobs,
    list_transitions,
)
from recovery.audit.models import Alert, DeadLetter, HealthCheck
from recovery.core.redact import AuditPolicy, redact_text
from tests.integration._db import database

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "sk_live_0123456789abcdef"


class Clock:
    """A settable clock, so ordering by time does not depend on how fast the test runs."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    with database(request.param, tmp_path_factory.mktemp("audit")) as url:
        db.upgrade(url)
        engine = db.make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def writer(engine: Engine, clock: Clock) -> AuditWriter:
    return AuditWriter(engine, clock=clock)


def new_id() -> str:
    return uuid.uuid4().hex


def queue(writer: AuditWriter, job_id: str, **overrides: Any) -> bool:
    fields: dict[str, Any] = {
        "integration": "payments",
        "method": "post",
        "path": "/v1/charges",
        "params": {"currency": "eur"},
        "idempotency_key": f"key-{job_id}",
    }
    fields.update(overrides)
    return writer.job_queued(job_id, **fields)


def job(engine: Engine, job_id: str) -> dict[str, Any]:
    found = get_job(engine, job_id)
    assert found is not None, f"job {job_id} has no audit row"
    return found


def test_queued_job_round_trips_with_secrets_redacted(writer: AuditWriter, engine: Engine) -> None:
    job_id = new_id()
    assert queue(
        writer,
        job_id,
        path=f"/v1/charges?api_key={SECRET}&page=2",
        params={"token": SECRET, "currency": "eur"},
    )

    found = job(engine, job_id)
    assert found["status"] == "queued"
    assert found["method"] == "POST"
    assert found["integration"] == "payments"
    assert found["idempotency_key"] == f"key-{job_id}"
    assert found["attempt_count"] == 0
    assert found["attempts"] == []
    assert found["finished_at"] is None
    assert found["first_seen_at"] == T0.isoformat()
    assert SECRET not in repr(found)
    assert found["params"] == {"token": "[REDACTED]", "currency": "[REDACTED]"}  # names only
    assert "page=2" in found["path"]


def test_get_job_of_an_unknown_id_is_none(engine: Engine) -> None:
    assert get_job(engine, "no-such-job") is None


def test_a_repeated_queued_write_changes_nothing_but_a_replay_requeues(
    writer: AuditWriter, engine: Engine, clock: Clock
) -> None:
    job_id = new_id()
    assert queue(writer, job_id)
    clock.advance()
    assert queue(writer, job_id, path="/other")
    assert job(engine, job_id)["path"] == "/v1/charges"
    assert job(engine, job_id)["updated_at"] == T0.isoformat()

    assert writer.job_status(job_id, "dead", attempts=3, finished=True)
    clock.advance()
    assert queue(writer, job_id, replay_count=1)
    found = job(engine, job_id)
    assert (found["status"], found["replay_count"], found["finished_at"]) == ("queued", 1, None)
    assert found["first_seen_at"] == T0.isoformat()


def test_a_replay_already_running_is_counted_but_stays_running(
    writer: AuditWriter, engine: Engine
) -> None:
    job_id = new_id()
    queue(writer, job_id)
    writer.job_status(job_id, "dead", finished=True)
    writer.job_started(job_id, "payments", "POST", "/v1/charges", {}, f"key-{job_id}", 1)
    assert queue(writer, job_id, replay_count=1)

    found = job(engine, job_id)
    assert (found["status"], found["replay_count"], found["finished_at"]) == ("running", 1, None)


def test_job_started_creates_the_row_the_producer_never_wrote(
    writer: AuditWriter, engine: Engine
) -> None:
    job_id = new_id()
    assert writer.job_started(job_id, "crm", "get", "/contacts", None, "k", 1)

    found = job(engine, job_id)
    assert (found["status"], found["attempt_count"], found["params"]) == ("running", 1, {})
    assert found["integration"] == "crm"


def test_job_started_moves_a_queued_job_to_running(
    writer: AuditWriter, engine: Engine, clock: Clock
) -> None:
    job_id = new_id()
    queue(writer, job_id)
    later = clock.advance(5)
    assert writer.job_started(job_id, "payments", "POST", "/ignored", {}, "k", 2)

    found = job(engine, job_id)
    assert (found["status"], found["attempt_count"]) == ("running", 2)
    assert found["path"] == "/v1/charges"
    assert found["first_seen_at"] == T0.isoformat()
    assert found["updated_at"] == later.isoformat()


def test_statuses_update_and_keep_fields_that_are_not_given(
    writer: AuditWriter, engine: Engine, clock: Clock
) -> None:
    job_id = new_id()
    queue(writer, job_id)
    assert writer.job_status(
        job_id,
        "retrying",
        attempts=1,
        last_status=503,
        strategy="server-error-circuit",
        last_error=f"HTTP 503 with Authorization: Bearer {SECRET}",
    )
    retrying = job(engine, job_id)
    assert (retrying["status"], retrying["attempt_count"], retrying["last_status"]) == (
        "retrying",
        1,
        503,
    )
    assert SECRET not in retrying["last_error"]
    assert retrying["finished_at"] is None

    finished_at = clock.advance(3)
    assert writer.job_status(
        job_id,
        "degraded",
        attempts=3,
        fallback_used="cache",
        outcome="served by cache fallback",
        finished=True,
    )
    found = job(engine, job_id)
    assert found["status"] == "degraded"
    assert found["fallback_used"] == "cache"
    assert found["strategy"] == "server-error-circuit"
    assert found["last_status"] == 503
    assert found["finished_at"] == finished_at.isoformat()


def test_bad_status_or_missing_job_returns_false_and_changes_nothing(
    writer: AuditWriter, engine: Engine
) -> None:
    job_id = new_id()
    queue(writer, job_id)
    with capture_logs() as logs:
        assert writer.job_status(job_id, "exploded") is False
        assert writer.job_status(new_id(), "running") is False
    assert job(engine, job_id)["status"] == "queued"
    assert [entry["event"] for entry in logs] == ["audit_write_failed", "audit_job_missing"]


def test_attempts_come_back_in_time_order_and_deduplicated(
    writer: AuditWriter, engine: Engine
) -> None:
    job_id = new_id()
    queue(writer, job_id)
    second = AttemptRecord(
        job_id=job_id,
        number=2,
        kind="call",
        started_at=T0 + timedelta(1),
        duration_ms=40,
        decision="done",
        http_status=200,
        dedupe_key=new_id(),
    )
    first = AttemptRecord(
        job_id=job_id,
        number=1,
        kind="call",
        started_at=T0,
        duration_ms=30_000,
        decision="retry",
        error_categories=["transient", "network"],
        retryable=True,
        error_message=f"timed out; password={SECRET}",
        delay_ms=1000,
        delay_source="backoff",
        strategy="network-retry",
        worker="w1@host",
        task_id="celery-task-1",
    )
    assert writer.attempt(second)
    assert writer.attempt(first)
    assert writer.attempt(second)

    attempts = job(engine, job_id)["attempts"]
    assert [a["number"] for a in attempts] == [1, 2]
    retry, done = attempts
    assert retry["error_categories"] == ["network", "transient"]
    assert (retry["retryable"], retry["delay_ms"], retry["delay_source"]) == (True, 1000, "backoff")
    assert (retry["worker"], retry["task_id"]) == ("w1@host", "celery-task-1")
    assert SECRET not in retry["error_message"]
    assert retry["started_at"] == T0.isoformat()
    assert (done["http_status"], done["retryable"], done["error_categories"]) == (200, None, [])


def test_an_attempt_for_an_unknown_job_or_of_an_unknown_kind_is_refused(
    writer: AuditWriter, engine: Engine
) -> None:
    job_id = new_id()
    queue(writer, job_id)
    orphan = AttemptRecord(
        job_id=new_id(), number=1, kind="call", started_at=T0, duration_ms=1, decision="done"
    )
    odd = AttemptRecord(
        job_id=job_id, number=1, kind="teleport", started_at=T0, duration_ms=1, decision="done"
    )
    assert writer.attempt(orphan) is False
    assert writer.attempt(odd) is False
    assert job(engine, job_id)["attempts"] == []


def test_times_in_other_zones_are_stored_as_the_same_instant_in_utc(
    writer: AuditWriter, engine: Engine
) -> None:
    job_id = new_id()
    queue(writer, job_id)
    in_berlin = datetime(2025, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    naive_utc = datetime(2025, 3, 1, 13, 0)
    for number, started in ((1, in_berlin), (2, naive_utc)):
        writer.attempt(
            AttemptRecord(
                job_id=job_id,
                number=number,
                kind="deferral",
                started_at=started,
                duration_ms=0,
                decision="defer",
            )
        )

    started = [a["started_at"] for a in job(engine, job_id)["attempts"]]
    assert started == ["2025-03-01T12:30:00+00:00", "2025-03-01T13:00:00+00:00"]


def test_list_jobs_filters_and_puts_the_newest_first(
    writer: AuditWriter, engine: Engine, clock: Clock
) -> None:
    integration = f"shipping-{new_id()}"
    ids = []
    for _ in range(4):
        clock.advance()
        ids.append(new_id())
        queue(writer, ids[-1], integration=integration)
    writer.job_status(ids[1], "failed", finished=True)

    listed = list_jobs(engine, integration=integration)
    assert [j["id"] for j in listed] == ids[::-1]
    assert [j["id"] for j in list_jobs(engine, integration=integration, limit=2)] == ids[:1:-1]
    failed = list_jobs(engine, integration=integration, status="failed")
    assert [j["id"] for j in failed] == [ids[1]]
    assert "attempts" not in failed[0]
    assert failed[0]["attempt_count"] == 0


@pytest.mark.parametrize("limit", [0, -1, 1001, True])
def test_list_jobs_rejects_a_bad_limit(engine: Engine, limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be a whole number from 1 to 1000"):
        list_jobs(engine, limit=limit)


def test_list_jobs_names_the_known_statuses_for_an_unknown_one(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"Unknown job status 'done'\. Use one of: queued"):
        list_jobs(engine, status="done")


def test_breaker_transitions_are_listed_newest_first(
    writer: AuditWriter, engine: Engine, clock: Clock
) -> None:
    integration = f"crm-{new_id()}"
    assert writer.breaker_transition(integration, "closed", "open", "5 failures in a row")
    clock.advance(30)
    assert writer.breaker_transition(integration, "open", "half_open", "reset timeout passed")
    assert writer.breaker_transition(f"other-{new_id()}", "closed", "open", "x", at=T0)

    listed = list_transitions(engine, integration=integration)
    assert [(t["from_state"], t["to_state"]) for t in listed] == [
        ("open", "half_open"),
        ("closed", "open"),
    ]
    assert listed[1]["at"] == T0.isoformat()
    assert listed[0]["reason"] == "reset timeout passed"
    assert len(list_transitions(engine, integration=integration, limit=1)) == 1


def test_health_checks_and_alerts_are_recorded(writer: AuditWriter, engine: Engine) -> None:
    integration = f"idp-{new_id()}"
    assert writer.health_check(integration, False, 5000, error=f"timeout token={SECRET}")
    assert writer.health_check(integration, True, 12, http_status=200)
    assert writer.alert("breaker_open", integration, "The breaker opened.", {"failures": 5})

    with Session(engine) as session:
        checks = session.scalars(
            select(HealthCheck)
            .where(HealthCheck.integration == integration)
            .order_by(HealthCheck.id)
        ).all()
        alert = session.scalars(select(Alert).where(Alert.integration == integration)).one()
    assert [(c.ok, c.http_status, c.latency_ms) for c in checks] == [
        (False, None, 5000),
        (True, 200, 12),
    ]
    assert SECRET not in (checks[0].error or "")
    assert (alert.kind, alert.details, alert.at) == ("breaker_open", {"failures": 5}, T0)


def dead_letter(job_id: str, message: str, attempts: int) -> DeadLetterRecord:
    return DeadLetterRecord(
        job_id=job_id,
        integration="payments",
        task_name="tasks.integration.call",
        error_categories=["server_error"],
        last_status=502,
        message=message,
        attempts=attempts,
        first_enqueued_at=T0,
        envelope={"job": {"job_id": job_id}},
        replay_count=attempts // 4,
    )


def read_dead_letter(engine: Engine, job_id: str) -> DeadLetter:
    with Session(engine) as session:
        return session.scalars(select(DeadLetter).where(DeadLetter.job_id == job_id)).one()


def test_dead_letters_park_move_and_park_again_after_a_replay(
    writer: AuditWriter, engine: Engine
) -> None:
    job_id = new_id()
    assert writer.dead_letter(dead_letter(job_id, "Bad gateway", 3))
    assert writer.dead_letter_state(job_id, "replayed", "operator replay")
    assert read_dead_letter(engine, job_id).state == "replayed"

    assert writer.dead_letter(dead_letter(job_id, "Bad gateway again", 6))
    parked = read_dead_letter(engine, job_id)
    assert (parked.state, parked.state_reason, parked.message) == (
        "parked",
        None,
        "Bad gateway again",
    )
    assert (parked.attempts, parked.replay_count) == (6, 1)
    assert parked.envelope == {"job": {"job_id": job_id}}
    assert parked.first_enqueued_at == T0


def test_dead_letter_state_refuses_unknown_states_and_jobs(
    writer: AuditWriter, engine: Engine
) -> None:
    job_id = new_id()
    writer.dead_letter(dead_letter(job_id, "x", 1))
    assert writer.dead_letter_state(job_id, "vanished", None) is False
    assert writer.dead_letter_state(new_id(), "purged", None) is False
    assert read_dead_letter(engine, job_id).state == "parked"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture],
)
@given(text=st.text(max_size=200), value=st.text(max_size=50))
@example(text="boom\x00after NUL, token=abc123", value="nul\x00inside")
def test_any_text_is_stored_rather_than_losing_the_write(
    writer: AuditWriter, engine: Engine, text: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shows_q = AuditPolicy.of(show_params=["q"])  # the integration's audit block shows q
    monkeypatch.setattr("recovery.audit.ops.policy_for", lambda _: shows_q)
    job_id = new_id()
    assert queue(writer, job_id, params={"q": value})
    assert writer.job_status(job_id, "failed", last_error=text, outcome=text)
    found = job(engine, job_id)
    assert found["params"] == {"q": redact_text(value)}  # a shown value is still scrubbed
    assert found["last_error"] == redact_text(text).replace("\x00", "\ufffd")


def test_a_dead_database_makes_every_write_return_false(clock: Clock) -> None:
    engine = db.make_engine("postgresql://postgres@127.0.0.1:1/x")
    writer = AuditWriter(engine, clock=clock)
    record = AttemptRecord(
        job_id="j", number=1, kind="call", started_at=T0, duration_ms=1, decision="done"
    )
    with capture_logs() as logs:
        results = [
            writer.job_queued("j", "api", "GET", "/", {}, "k"),
            writer.job_started("j", "api", "GET", "/", {}, "k", 1),
            writer.job_status("j", "running"),
            writer.attempt(record),
            writer.breaker_transition("api", "closed", "open", "failures"),
            writer.health_check("api", False, 10),
            writer.dead_letter(dead_letter("j", "x", 1)),
            writer.dead_letter_state("j", "purged", None),
            writer.alert("breaker_open", "api", "The breaker opened.", {}),
        ]
    engine.dispose()
    assert results == [False] * 9
    assert {entry["event"] for entry in logs} == {"audit_write_failed"}
    assert {entry["table"] for entry in logs} == {
        "jobs",
        "attempts",
        "breaker_transitions",
        "health_checks",
        "dead_letters",
        "alerts",
    }
    assert all("Connection refused" in entry["error"] for entry in logs)
