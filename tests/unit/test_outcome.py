"""`recovery.engine.outcome`: what an exception raised by the engine makes of a delivery."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis
import sqlalchemy.exc
from kombu.exceptions import OperationalError as KombuOperationalError

from recovery.config.registry import UnknownIntegrationError
from recovery.core.message import JobSpec, Progress
from recovery.engine.events import standard_bus
from recovery.engine.outcome import (
    JobDeadLettered,
    JobFailed,
    Step,
    after_exception,
    celery_failure,
    describe,
    is_infrastructure,
)


class _Audit:
    def __init__(self) -> None:
        self.statuses: list[tuple[str, str, dict[str, Any]]] = []

    def job_status(self, job_id: str, status: str, **details: Any) -> bool:
        self.statuses.append((job_id, status, details))
        return True


class _Registry:
    def get(self, integration_id: str) -> Any:
        if integration_id != "shop":
            raise UnknownIntegrationError(integration_id, ["shop"])
        return SimpleNamespace(headers={"X-Api-Key": "int3gration-key"})


def runtime(*, dlq: bool = True, limit: int = 3) -> Any:
    settings = SimpleNamespace(poison_max_deliveries=limit, visibility_timeout_s=20,
                               dlq_enabled=dlq)
    rt = SimpleNamespace(settings=settings, registry=_Registry(), audit=_Audit())
    rt.events = standard_bus(lambda: rt.audit)  # as Runtime builds it
    return rt


JOB = JobSpec(job_id="j-1", integration="shop", method="GET", path="/x",
              headers={"X-Team": "t3am-header-value"}, params={"q": "p4ram-value"},
              idempotency_key="k-1")


@pytest.mark.parametrize("exc", [
    redis.ConnectionError("Error 111 connecting"), redis.TimeoutError("Timeout reading"),
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    redis.ResponseError("BUSY Redis is busy running a script."),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    KombuOperationalError("connection refused"), ConnectionResetError("reset by peer"),
])
def test_infrastructure_errors_are_recognised(exc: BaseException) -> None:
    assert is_infrastructure(exc)


@pytest.mark.parametrize("exc", [
    redis.ResponseError("ERR value is not an integer or out of range"),
    UnicodeEncodeError("latin-1", "\u2603", 0, 1, "ordinal not in range(256)"),
    UnknownIntegrationError("gone", ["shop"]), ValueError("bad"), RuntimeError("bug"),
])
def test_other_errors_are_not_infrastructure(exc: BaseException) -> None:
    assert not is_infrastructure(exc)


def test_describe_names_the_type_and_hides_secrets_and_header_values() -> None:
    exc = RuntimeError("sent X-Team: t3am-header-value with Authorization: Bearer abc.def.ghi")
    assert describe(exc, ["t3am-header-value"]) == (
        "RuntimeError: sent X-Team: [REDACTED] with Authorization: Bearer [REDACTED]")


def test_describe_never_shows_the_character_an_encoding_refused() -> None:
    exc = UnicodeEncodeError("latin-1", "caf\u00e9\u2603", 4, 5, "ordinal not in range(256)")
    assert describe(exc) == "UnicodeEncodeError: a value could not be encoded as latin-1."


def test_describe_is_short() -> None:
    reason = describe(RuntimeError("x" * 5000))
    assert len(reason) <= len("RuntimeError: ") + 300 and reason.endswith("...")


def test_an_unexpected_error_dead_letters_as_unknown_with_the_job_values_cut_out() -> None:
    exc = RuntimeError("q=p4ram-value key=int3gration-key h=t3am-header-value")
    step = after_exception(JOB, Progress(attempt=2), runtime(), exc)
    assert (step.status, step.attempts, step.strategy) == ("dead", 1, "dead-letter-queue")
    assert step.failure is not None and [str(c) for c in step.failure.categories] == ["unknown"]
    assert step.reason == ("The job raised an unexpected error (RuntimeError: q=[REDACTED] "
                           "key=[REDACTED] h=[REDACTED]).")
    assert step.failure.message == step.reason


def test_with_the_dlq_off_an_unexpected_error_fails_the_job() -> None:
    step = after_exception(JOB, Progress(), runtime(dlq=False), ValueError("bad"))
    assert step.status == "failed"


def test_an_infrastructure_error_requeues_with_a_growing_pause_up_to_the_limit() -> None:
    rt = runtime(limit=3)
    progress = Progress()
    delays = []
    for _ in range(3):
        step = after_exception(JOB, progress, rt, redis.ConnectionError("refused"))
        assert step.status == "requeue" and step.progress.attempt == 1
        delays.append(step.countdown_s)
        progress = step.progress
    assert delays == [2.0, 4.0, 8.0] and progress.requeues == 3
    assert [status for _, status, _ in rt.audit.statuses] == ["queued"] * 3
    step = after_exception(JOB, progress, rt, redis.ConnectionError("refused"))
    assert step.status == "dead"
    assert step.reason == ("The infrastructure failed 4 times in a row (ConnectionError: "
                           "refused).")


def test_a_requeue_pause_stays_below_the_visibility_timeout() -> None:
    step = after_exception(JOB, Progress(requeues=4), runtime(limit=10),
                           redis.TimeoutError("slow"))
    assert step.countdown_s == pytest.approx(18.0)


def test_the_next_attempt_or_deferral_starts_the_requeue_count_again() -> None:
    assert Progress(requeues=2).next_attempt().requeues == 0
    assert Progress(requeues=2).deferred(1.0).requeues == 0
    assert Progress.from_message(Progress(requeues=2).to_message()).requeues == 2


def test_dead_and_failed_steps_become_celery_failures_with_the_redacted_reason() -> None:
    dead = Step("dead", Progress(), 1, reason="token=abc123 was refused")
    failure = celery_failure(dead, "dead, HTTP 400, dead-letter-queue")
    assert isinstance(failure, JobDeadLettered)
    assert str(failure) == "dead, HTTP 400, dead-letter-queue: token=[REDACTED] was refused"
    assert isinstance(celery_failure(Step("failed", Progress(), 1), "failed"), JobFailed)
    for status in ("succeeded", "degraded", "duplicate"):
        assert celery_failure(Step(status, Progress(), 1), status) is None  # type: ignore[arg-type]
