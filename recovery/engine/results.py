"""A finished job's outcome: kept in the result store, then sent to the producer's callbacks.

Called by `recovery.engine.outcome.conclude` once the final state is in the audit trail (and
a dead job is in the dead-letter queue), for every final status:

* `succeeded` / `degraded`: the HTTP status and parsed body (a fallback's body for degraded,
  with the fallback named), then `on_success`;
* `duplicate`: the body of the job whose success the idempotency key records, if its result
  is still kept (`duplicate_of` names it); a redelivery of a job that already succeeded keeps
  its stored result. Then `on_success`;
* `failed` / `dead`: no body; the reason and error category. `on_failure` is sent when the
  job fails, and when it is dead-lettered for the first time: a replay that dies again does
  not call it again, and a replay that succeeds calls `on_success` (its result replaces the
  dead one).

A callback is the Celery task the producer named, sent with `send_task` to CALLBACK_QUEUE,
with the outcome (a JSON object) as its only argument, serialised as plain JSON even when
RECOVERY_ENCRYPTION_KEYS encrypts the work queue (the producer's app reads it), and with a
task id of its own
(`{job_id}.on_success.{replay_count}`), so a redelivered job's second send can be recognised.
Flower and the task events show `<outcome of JOB: STATUS>`, never the body. Neither the
result nor the callback may undo the final state: a failure of either is logged (without the
body) and the job stays final.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from recovery.core.outcome_value import Outcome
from recovery.core.redact import redact_text

if TYPE_CHECKING:
    from recovery.core.message import JobSpec
    from recovery.core.step import Step
    from recovery.engine.runtime import Runtime

log = structlog.get_logger(__name__)

_BODY_STATUSES = frozenset({"succeeded", "degraded"})


def outcome_of(job: JobSpec, step: Step) -> Outcome:
    """The outcome a final step stands for (a duplicate's body is filled in later)."""
    failure = step.failure
    ok = step.status in ("succeeded", "degraded", "duplicate")
    return Outcome(
        job_id=job.job_id, status=step.status,  # type: ignore[arg-type]
        integration=job.integration, http_status=step.http_status,
        body=step.body if step.status in _BODY_STATUSES else None,
        fallback=step.fallback, strategy=step.strategy,
        error=None if ok else redact_text(step.reason),
        error_category=str(failure.primary) if failure is not None and not ok else None,
        attempts=step.attempts, replay_count=job.replay_count).finished_now()


def _duplicate(rt: Runtime, job: JobSpec, outcome: Outcome, original: str | None
               ) -> tuple[Outcome, bool]:
    """A duplicate's outcome and whether to store it: the original's answer when kept.
    `original` is the job the idempotency claim found the key's success recorded for."""
    if original is None:
        return outcome, True
    earlier = rt.results.get(original)
    if original == job.job_id:  # a redelivery of this very job, after its success
        return (earlier, False) if earlier is not None and earlier.ok else (outcome, True)
    if earlier is None or not earlier.ok:
        return replace(outcome, duplicate_of=original), True
    return replace(outcome, duplicate_of=original, http_status=earlier.http_status,
                   body=earlier.body, body_omitted=earlier.body_omitted,
                   fallback=earlier.fallback), True


def keep(rt: Runtime, job: JobSpec, step: Step) -> Outcome:
    """Write the job's outcome to the result store; returns what was kept."""
    outcome = outcome_of(job, step)
    store = True
    if step.status == "duplicate":
        outcome, store = _duplicate(rt, job, outcome, step.duplicate_of)
    return rt.results.put(outcome) if store else outcome


def callback_for(job: JobSpec, outcome: Outcome) -> tuple[str, str] | None:
    """(which, task name) to call for this outcome, or None: see the module's docstring."""
    if outcome.ok:
        return ("on_success", job.on_success) if job.on_success else None
    if outcome.status == "dead" and job.replay_count > 0:
        return None
    return ("on_failure", job.on_failure) if job.on_failure else None


def send_callback(rt: Runtime, job: JobSpec, outcome: Outcome) -> str | None:
    """Send the callback task this outcome calls for; returns its task id, or None."""
    chosen = callback_for(job, outcome)
    if chosen is None:
        return None
    which, name = chosen
    from recovery.celery_base import app

    task_id = f"{job.job_id}.{which}.{job.replay_count}"
    shown = f"<outcome of {job.job_id}: {outcome.status}>"
    app.send_task(name, args=[outcome.to_dict()], task_id=task_id, serializer="json",
                  queue=rt.settings.callback_queue, argsrepr=f"({shown},)", kwargsrepr="{}")
    log.info("callback_sent", job_id=job.job_id, callback=which, task=name, task_id=task_id,
             status=outcome.status)
    return task_id


def finish(rt: Runtime, job: JobSpec, step: Step) -> None:
    """Keep the outcome, then send the callback; neither may undo the final state."""
    outcome: Outcome | None = None
    try:
        outcome = keep(rt, job, step)
    except Exception as exc:  # logged: the job is final whatever happens here
        _log_failure("result_not_kept", job, exc)
    if outcome is None:
        outcome = outcome_of(job, step)
    try:
        send_callback(rt, job, outcome)
    except Exception as exc:  # logged: see above
        _log_failure("callback_not_sent", job, exc)


def _log_failure(event: str, job: JobSpec, exc: BaseException) -> None:
    detail: dict[str, Any] = {"job_id": job.job_id, "error_type": type(exc).__name__,
                              "error": redact_text(str(exc))[:300]}
    log.error(event, **detail)
