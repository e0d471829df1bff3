"""How a delivery ends: the one place that decides a job's final state and writes it.

Every delivery of a job ends in exactly one of these ways, and no other:

* a final state in the audit trail, written here: `succeeded`, `degraded`, `duplicate`,
  `failed` (only with the DLQ off) or `dead` (parked in the dead-letter queue first);
* a retry or a deferral: a `Step` with a countdown, which the task adapter hands to Celery;
* back in the broker queue (`requeue`): the engine raised an infrastructure error (Redis or
  PostgreSQL unreachable or refusing: connection, timeout, OOM, BUSY, read-only...), which says
  nothing about the job. It goes round again after a short pause, counted in the message
  (`Progress.requeues`), at most POISON_MAX_DELIVERIES times; past that it is dead-lettered;
* anything else the engine raises dead-letters the job as error category `unknown`, with a
  short reason built from the exception's type and its redacted text, never a header value.

The Celery task adapter (`tasks.integration`) and the pipeline use these functions; none of
them raises except `conclude`, with `DeadLetterPublishError`, when the job could not be parked
(the adapter then leaves the message to the broker, which delivers it again).
"""

from __future__ import annotations

import builtins
import contextlib
import traceback
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

import redis
import sqlalchemy.exc
import structlog
from kombu.exceptions import OperationalError as KombuOperationalError

from recovery.audit.ops import DatabaseUnavailable
from recovery.audit.stream import SpoolUnavailable
from recovery.config.broker import max_countdown_s
from recovery.core.errors import Classification, ErrorCategory
from recovery.core.message import JobSpec, Progress
from recovery.core.policy import end_status
from recovery.core.redact import redact_text
from recovery.core.step import Step
from recovery.dlq import park as dlq_park
from recovery.dlq.park import DeadLetterPublishError, park
from recovery.engine.events import JobFinished, JobGaveUp, RecoveryTried, StatusChanged
from recovery.engine.results import finish as finish_result

if TYPE_CHECKING:
    from recovery.dlq.envelope import Envelope
    from recovery.engine.runtime import Runtime

log = structlog.get_logger(__name__)

FINAL_STATUSES = frozenset({"succeeded", "degraded", "duplicate", "failed", "dead"})
REASON_MAX_CHARS = 300
REQUEUE_BASE_DELAY_S = 2.0
# Redis replies that describe the server's state, not the command: worth waiting out.
_REDIS_BUSY_REPLIES = ("BUSY ", "MISCONF ", "NOREPLICAS ", "LOADING ")
_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError, redis.exceptions.MasterDownError,
    sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError, KombuOperationalError, DatabaseUnavailable, SpoolUnavailable,
    builtins.ConnectionError, builtins.TimeoutError,
)


class JobNotCompleted(Exception):
    """Raised by the task after a job was parked or marked failed, so that Celery (and Flower,
    through the task-failed event) records FAILURE. The message is the redacted outcome only.
    The task lists these in `throws`: Celery logs them without a traceback and acks."""


class JobDeadLettered(JobNotCompleted):
    """The job is in the dead-letter queue (replayable)."""


class JobFailed(JobNotCompleted):
    """The job ended `failed` (the dead-letter queue is off)."""


def is_infrastructure(exc: BaseException) -> bool:
    """Whether `exc` says Redis or PostgreSQL cannot serve right now (not that the job is bad)."""
    if isinstance(exc, _INFRASTRUCTURE):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_REDIS_BUSY_REPLIES)


def describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """A short reason for an exception: its type and its redacted text. Every value in
    `secrets` (the job's header and parameter values) is cut out first; an encoding error
    names only the encoding, never the character it could not encode."""
    name = type(exc).__name__
    if isinstance(exc, UnicodeError):
        encoding = getattr(exc, "encoding", "") or "the required encoding"
        return f"{name}: a value could not be encoded as {encoding}."
    text = str(exc)
    for value in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(value, "[REDACTED]")
    text = redact_text(" ".join(text.split()))
    if len(text) > REASON_MAX_CHARS:
        text = text[:REASON_MAX_CHARS - 3] + "..."
    return f"{name}: {text}" if text else name


def job_secrets(job: JobSpec, rt: Runtime | None = None) -> list[str]:
    """The values an exception text must never show: job headers and params, and the
    integration's own header values (credentials) when the integration is still known."""
    values = [str(v) for v in job.headers.values()]
    values += [str(v) for v in (job.params or {}).values() if not isinstance(v, list | dict)]
    if rt is not None:
        with contextlib.suppress(Exception):  # removed from the registry: nothing more to hide
            values += [str(v) for v in rt.registry.get(job.integration).headers.values()]
    return values


def after_exception(job: JobSpec, progress: Progress, rt: Runtime,
                    exc: BaseException) -> Step:
    """What a delivery whose engine raised `exc` becomes: a requeue or a dead letter."""
    reason = describe(exc, job_secrets(job, rt))
    limit = rt.settings.poison_max_deliveries
    infrastructure = is_infrastructure(exc)
    if infrastructure and progress.requeues < limit:
        delay_s = min(REQUEUE_BASE_DELAY_S * 2 ** progress.requeues,
                      max_countdown_s(rt.settings))
        _log_exception(job, exc, reason, "requeue")
        _guarded("audit", lambda: rt.events.publish(StatusChanged(
            job.job_id, "queued",
            {"last_error": f"Requeued after an infrastructure error: {reason}"})))
        return Step("requeue", replace(progress, requeues=progress.requeues + 1),
                    progress.attempt - 1, countdown_s=delay_s,
                    reason=f"Requeued: the infrastructure failed ({reason}).")
    if infrastructure:
        reason = (f"The infrastructure failed {progress.requeues + 1} times in a row "
                  f"({reason}).")
    else:
        reason = f"The job raised an unexpected error ({reason})."
    status = end_status(rt.settings.dlq_enabled)
    _log_exception(job, exc, reason, status)
    failure = Classification(
        categories=frozenset({ErrorCategory.UNKNOWN}), primary=ErrorCategory.UNKNOWN,
        retryable=False, status=None, retry_after_s=None, message=reason,
        strategy="dead-letter-queue")
    return Step(status, progress, progress.attempt - 1, strategy="dead-letter-queue",
                failure=failure, reason=reason)


def _log_exception(job: JobSpec, exc: BaseException, reason: str, action: str) -> None:
    """Where it was raised (file, line, function: no values) and the redacted reason."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    where = [f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} {frame.name}"
             for frame in frames]
    log.error("job_raised", job_id=job.job_id, integration=job.integration,
              error_type=type(exc).__name__, error=reason, where=where, action=action)


def succeeded(rt: Runtime, job: JobSpec, progress: Progress, http_status: int,
              strategy: str | None) -> None:
    rt.events.publish(JobFinished(job.job_id, "succeeded", {
        "attempts": progress.attempt, "deferrals": progress.deferrals,
        "outcome": f"HTTP {http_status}", "strategy": strategy, "last_status": http_status}))


def degraded(rt: Runtime, job: JobSpec, attempts: int, fallback: str,
             last_status: int | None, last_error: str | None) -> None:
    rt.events.publish(JobFinished(job.job_id, "degraded", {
        "attempts": attempts, "outcome": f"served by {fallback} fallback",
        "strategy": "graceful-degradation", "fallback_used": fallback,
        "last_status": last_status, "last_error": last_error}))


def duplicate(rt: Runtime, job: JobSpec) -> None:
    rt.events.publish(JobFinished(job.job_id, "duplicate",
                                  {"outcome": "idempotency key already succeeded"}))


def conclude(job: JobSpec, step: Step, rt: Runtime,
             sink: Callable[[Envelope], None] | None = None) -> None:
    """Record a final step: a failure parks the job in the DLQ (to `sink`, else the broker), or
    marks it failed when the DLQ is off; then every final outcome is kept in the result store
    and sent to the job's callback (`recovery.engine.results`). Raises DeadLetterPublishError
    when the job was not parked (no result is written then: the job runs again)."""
    if step.status not in FINAL_STATUSES:
        return
    if step.status in ("dead", "failed"):
        _record_failure(job, step, rt, sink)
    finish_result(rt, job, step)


def _record_failure(job: JobSpec, step: Step, rt: Runtime,
                    sink: Callable[[Envelope], None] | None) -> None:
    _guarded("metrics", lambda: rt.events.publish(
        RecoveryTried(step.strategy or "dead-letter-queue", False)))
    _guarded("sentry", lambda: rt.events.publish(
        JobGaveUp(job, step.status, step.reason, step.http_status)))
    if step.status == "dead":
        park_dead(rt, job, step, sink)
        return
    _guarded("audit", lambda: mark_failed(rt, job, step))
    log.error("job_failed", job_id=job.job_id, reason=step.reason)


def mark_failed(rt: Runtime, job: JobSpec, step: Step) -> None:
    """Write the final `failed` status of a job whose last step failed (the DLQ is off)."""
    failure = step.failure
    rt.events.publish(JobFinished(job.job_id, "failed", {
        "attempts": step.attempts, "outcome": step.reason, "strategy": step.strategy,
        "last_status": failure.status if failure else None,
        "last_error": failure.message if failure else None}))


def mark_crashed(rt: Runtime, job_id: str, reason: str) -> None:
    """Write the final `failed` status of a job whose in-process run crashed (embedded mode)."""
    rt.events.publish(JobFinished(job_id, "failed", {"outcome": reason}))


def _publish(envelope: Envelope) -> None:
    dlq_park.publish(envelope)  # looked up at call time: tests replace it


def park_dead(rt: Runtime, job: JobSpec, step: Step,
              sink: Callable[[Envelope], None] | None = None) -> Envelope:
    """Park a dead job (to `sink`, else the broker's `dlq`, whose cap is then enforced) and
    write its final `dead` status. If the envelope reached the queue, a later failure (the
    audit rows) must not send the job round again; if not, the job must not be acked:
    DeadLetterPublishError."""
    published: list[Envelope] = []

    def tracked(envelope: Envelope) -> None:
        (sink or _publish)(envelope)
        published.append(envelope)

    try:
        envelope = park(rt, job, step, sink=tracked, keep_bounded=sink is None)
    except DeadLetterPublishError:
        raise
    except Exception as exc:  # published or not decides what it means
        reason = describe(exc, job_secrets(job, rt))
        if not published:
            raise DeadLetterPublishError(
                f"Could not dead-letter job {job.job_id} ({reason}); the broker will deliver "
                "the job again.") from None
        log.error("dead_letter_audit_failed", job_id=job.job_id, error=reason)
        envelope = published[0]
    _guarded("audit", lambda: mark_dead(rt, job, step, envelope))
    return envelope


def mark_dead(rt: Runtime, job: JobSpec, step: Step, envelope: Envelope) -> None:
    """Write the final `dead` status of a job parked as `envelope`."""
    rt.events.publish(JobFinished(job.job_id, "dead", {
        "attempts": step.attempts, "outcome": step.reason, "strategy": "dead-letter-queue",
        "last_status": envelope.last_status, "last_error": envelope.message}))


def _guarded(what: str, action: Callable[[], object]) -> None:
    """Run a bookkeeping step that must not stop a job from reaching its final state."""
    try:
        action()
    except Exception as exc:  # logged: the final state matters more
        log.error("final_state_side_effect_failed", what=what, error_type=type(exc).__name__,
                  error=redact_text(str(exc))[:REASON_MAX_CHARS])


def celery_failure(step: Step, line: str) -> JobNotCompleted | None:
    """The exception the task raises so Celery records FAILURE for a dead or failed job."""
    reason = redact_text(step.reason)
    if step.status == "dead":
        return JobDeadLettered(f"{line}: {reason}")
    if step.status == "failed":
        return JobFailed(f"{line}: {reason}")
    return None


def outcome_line(step: Step) -> str:
    """The task's return value: one short line for the worker log and Flower (results are not
    stored). A string, because Celery's safe repr of a dict costs more than the rest of the
    task's bookkeeping. A degraded job names the fallback that answered."""
    parts: list[str] = [step.status]
    if step.http_status is not None:
        parts.append(f"HTTP {step.http_status}")
    if step.fallback:
        parts.append(f"{step.fallback} fallback")
    elif step.strategy:
        parts.append(step.strategy)
    return ", ".join(parts)
