"""Results and callbacks without a worker: the outcome of each final step, which callback a
job's outcome calls, and the settings that bound the result store."""

from __future__ import annotations

import pytest

from recovery.config.settings import SettingsError, load_settings
from recovery.core.errors import Classification, ErrorCategory
from recovery.core.message import JobSpec, Progress
from recovery.core.outcome_value import Outcome
from recovery.core.request import EnqueueError, check_callback
from recovery.core.step import Step
from recovery.engine.results import callback_for, outcome_of

JOB = JobSpec(job_id="j", integration="pay", method="POST", path="/c", idempotency_key="j",
              on_success="app.done", on_failure="app.failed")
FAILURE = Classification(categories=frozenset({ErrorCategory.SERVER_ERROR}),
                         primary=ErrorCategory.SERVER_ERROR, retryable=True, status=503,
                         retry_after_s=None, message="HTTP 503", strategy="server-error-circuit")


def step(status: str, **extra: object) -> Step:
    return Step(status, Progress(), 3, **extra)  # type: ignore[arg-type]


def test_a_succeeded_step_keeps_status_and_body() -> None:
    outcome = outcome_of(JOB, step("succeeded", http_status=201, body={"id": 7}))
    assert (outcome.status, outcome.http_status, outcome.body, outcome.error) == (
        "succeeded", 201, {"id": 7}, None)
    assert outcome.ok and outcome.attempts == 3 and outcome.finished_at


def test_a_degraded_step_names_the_fallback() -> None:
    outcome = outcome_of(JOB, step("degraded", http_status=200, body="cached", fallback="cache",
                                   strategy="graceful-degradation", failure=FAILURE))
    assert (outcome.fallback, outcome.body, outcome.error_category) == ("cache", "cached", None)


def test_a_dead_step_has_no_body_and_a_redacted_reason() -> None:
    outcome = outcome_of(JOB, step("dead", http_status=503, body={"leak": 1}, failure=FAILURE,
                                   reason="HTTP 503 with Authorization: Bearer abcdefgh123"))
    assert outcome.body is None and not outcome.ok
    assert outcome.error_category == "server_error"
    assert outcome.error is not None and "abcdefgh123" not in outcome.error


@pytest.mark.parametrize(("status", "replay_count", "expected"), [
    ("succeeded", 0, ("on_success", "app.done")),
    ("degraded", 0, ("on_success", "app.done")),
    ("duplicate", 3, ("on_success", "app.done")),
    ("succeeded", 2, ("on_success", "app.done")),  # a replayed dead job that succeeds
    ("dead", 0, ("on_failure", "app.failed")),  # dead-lettered the first time
    ("dead", 1, None),  # a replay that dies again does not call it again
    ("failed", 0, ("on_failure", "app.failed")),
])
def test_which_callback_an_outcome_calls(status: str, replay_count: int,
                                         expected: tuple[str, str] | None) -> None:
    job = JobSpec(**{**JOB.to_message(), "replay_count": replay_count})
    assert callback_for(job, Outcome("j", status, replay_count=replay_count)) == expected  # type: ignore[arg-type]


def test_no_callback_when_the_job_named_none() -> None:
    bare = JobSpec(job_id="j", integration="pay", method="GET", path="/", idempotency_key="j")
    assert callback_for(bare, Outcome("j", "succeeded")) is None
    assert callback_for(bare, Outcome("j", "dead")) is None


def test_callbacks_survive_the_job_message() -> None:
    assert JobSpec.from_message(JOB.to_message()) == JOB
    older = {k: v for k, v in JOB.to_message().items() if k not in ("on_success", "on_failure")}
    assert JobSpec.from_message(older).on_success is None


def test_result_settings_defaults_and_errors() -> None:
    settings = load_settings({})
    assert (settings.result_ttl_ms, settings.result_max_bytes, settings.callback_queue) == (
        86_400_000, 1024 * 1024, "celery")
    with pytest.raises(SettingsError) as caught:
        load_settings({"RESULT_TTL": "10"})
    assert str(caught.value) == "RESULT_TTL must be at least 1000 ms, got '10'."
    with pytest.raises(SettingsError) as caught:
        load_settings({"RESULT_MAX_BYTES": "-1"})
    assert str(caught.value) == "RESULT_MAX_BYTES must be at least 0 bytes, got '-1'."
    with pytest.raises(SettingsError) as caught:
        load_settings({"CALLBACK_QUEUE": "no spaces"})
    assert str(caught.value) == ("CALLBACK_QUEUE must be a queue name of letters, digits and "
                                 "_.:- (at most 100), got 'no spaces'.")


def test_callbacks_survive_the_dead_letter_envelope_and_a_replay() -> None:
    from recovery.dlq.envelope import Envelope, envelope_for

    envelope = envelope_for(JOB, categories=["server_error"], last_status=503, message="x",
                            attempts=3, dead_at="2026-01-01T00:00:00+00:00", cipher=None)
    again = Envelope.from_message(envelope.sealed_message()).job().replayed()
    assert (again.on_success, again.on_failure, again.replay_count) == (
        "app.done", "app.failed", 1)
    assert "app.done" not in str(envelope.view())  # callbacks travel sealed, not displayed


class _Settings:
    callback_queue = "producer-callbacks"


class _Runtime:
    """What `finish` needs of a runtime: settings, a result store, idempotency (unused)."""

    def __init__(self) -> None:
        from recovery.state.results import ResultStore

        self.settings = _Settings()
        self.results = ResultStore(None, ttl_s=60)


def test_the_callback_is_sent_as_json_with_its_own_id_and_no_body_in_its_repr(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from recovery.celery_app import app
    from recovery.engine.results import finish

    sent: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(app, "send_task", lambda name, **options: sent.append((name, options)))
    rt = _Runtime()
    finish(rt, JOB, step("succeeded", http_status=201, body={"card": "4242-s3cret"}))  # type: ignore[arg-type]
    [(name, options)] = sent
    assert name == "app.done"
    assert options["task_id"] == "j.on_success.0" and options["queue"] == "producer-callbacks"
    assert options["serializer"] == "json"
    assert options["argsrepr"] == "(<outcome of j: succeeded>,)"
    [payload] = options["args"]  # type: ignore[misc]
    assert payload["body"] == {"card": "4242-s3cret"} and payload["status"] == "succeeded"
    kept = rt.results.get("j")
    assert kept is not None and kept.body == {"card": "4242-s3cret"}


def test_a_callback_that_cannot_be_sent_is_logged_without_the_body(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from structlog.testing import capture_logs

    from recovery.celery_app import app
    from recovery.engine.results import finish

    def refuse(name: str, **options: object) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "send_task", refuse)
    rt = _Runtime()
    with capture_logs() as logs:
        finish(rt, JOB, step("dead", http_status=503, failure=FAILURE, reason="HTTP 503"))  # type: ignore[arg-type]
    [event] = [e for e in logs if e["event"] == "callback_not_sent"]
    assert event["job_id"] == "j" and event["error_type"] == "ConnectionError"
    assert rt.results.get("j") is not None  # the outcome was kept all the same


@pytest.mark.parametrize("name", ["tasks.integration.call", "tasks.workflow.step",
                                  "tasks.health.check", "tasks.dlq.replay",
                                  "celery.backend_cleanup"])
def test_a_callback_may_not_name_a_task_of_this_system(name: str) -> None:
    with pytest.raises(EnqueueError) as refused:
        check_callback("on_success", name)
    assert str(refused.value) == (
        f"on_success names {name!r}, a task of this system itself; name a task of your own "
        "app that takes the outcome as its argument.")
    assert check_callback("on_success", "app.tasks.workflow_done") == "app.tasks.workflow_done"
