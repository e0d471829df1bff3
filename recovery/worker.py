"""What the Celery task adapter needs around the engine: final states and redacted reprs."""

from __future__ import annotations

import structlog

from recovery.dlq.park import park
from recovery.jobs import JobSpec, Progress
from recovery.metrics import observe_recovery
from recovery.pipeline import Step
from recovery.producer import bounded_repr
from recovery.runtime import Runtime
from recovery.sentry import capture_job_failure

log = structlog.get_logger(__name__)


def task_reprs(job: JobSpec, progress: Progress) -> dict[str, str]:
    """Redacted argument reprs: what Flower and the task events show instead of the real ones,
    bounded so that they cannot double the size of a large message."""
    return {"argsrepr": "()",
            "kwargsrepr": bounded_repr({"job": job.redacted(), "progress": progress.to_message()})}


def outcome_line(step: Step) -> str:
    """The task's return value: one short line for the worker log and Flower (results are not
    stored). A string, because Celery's safe repr of a dict costs more than the rest of the
    task's bookkeeping."""
    parts: list[str] = [step.status]
    if step.http_status is not None:
        parts.append(f"HTTP {step.http_status}")
    if step.fallback:
        parts.append(f"{step.fallback} fallback")
    elif step.strategy:
        parts.append(step.strategy)
    return ", ".join(parts)


def finish_unsuccessful(job: JobSpec, step: Step, rt: Runtime) -> None:
    """Record a final failure: park the job in the DLQ, or mark it failed when the DLQ is off."""
    if step.status not in ("dead", "failed"):
        return
    observe_recovery(step.strategy or "dead-letter-queue", False)
    capture_job_failure(job.job_id, job.integration, step.status, step.reason, step.http_status)
    if step.status == "dead":
        park(rt, job, step)
    elif step.status == "failed":
        failure = step.failure
        rt.audit.job_status(
            job.job_id, "failed", attempts=step.attempts, outcome=step.reason,
            strategy=step.strategy, last_status=failure.status if failure else None,
            last_error=failure.message if failure else None, finished=True)
        log.error("job_failed", job_id=job.job_id, reason=step.reason)
