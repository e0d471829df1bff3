"""What the Celery task adapter needs around the engine: poison detection, final states, reprs."""

from __future__ import annotations

from typing import Any

import redis
import structlog

from recovery.alerts import alert
from recovery.dlq.park import park
from recovery.errors import Classification, ErrorCategory
from recovery.jobs import JobSpec, Progress
from recovery.metrics import observe_recovery
from recovery.pipeline import Step
from recovery.runtime import Runtime
from recovery.sentry import capture_job_failure

log = structlog.get_logger(__name__)

DELIVERY_COUNT_TTL_S = 24 * 3600


def task_reprs(job: JobSpec, progress: Progress) -> dict[str, str]:
    """Redacted argument reprs: what Flower and the task events show instead of the real ones."""
    return {"argsrepr": "()",
            "kwargsrepr": repr({"job": job.redacted(), "progress": progress.to_message()})}


def poison_classification(deliveries: int) -> Classification:
    return Classification(
        categories=frozenset({ErrorCategory.UNKNOWN}), primary=ErrorCategory.UNKNOWN,
        retryable=False, status=None, retry_after_s=None,
        message=f"poison: the job was delivered {deliveries} times and its worker died each time.",
        strategy="dead-letter-queue")


def count_delivery(job: JobSpec, progress: Progress, rt: Runtime) -> int:
    """How many times this exact message (job, attempt, deferral) has been delivered."""
    if rt.redis is None:
        return 1
    key = (f"{rt.settings.redis_key_prefix}deliveries:{job.job_id}:{job.replay_count}:"
           f"{progress.attempt}:{progress.deferrals}")
    try:
        pipe = rt.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, DELIVERY_COUNT_TTL_S)
        return int(pipe.execute()[0])
    except redis.RedisError as exc:
        log.warning("delivery_count_unavailable", error=str(exc))
        return 1


def guard_delivery(job: JobSpec, progress: Progress, rt: Runtime, request: Any) -> Step | None:
    """A Step that dead-letters a poison job, or None when the job may run.

    A message delivered again and again at the same attempt means its worker process died every
    time (late acks redeliver it): after `POISON_MAX_DELIVERIES` it goes to the DLQ as poison.
    """
    deliveries = count_delivery(job, progress, rt)
    if deliveries <= rt.settings.poison_max_deliveries:
        return None
    alert("poison_job", f"Job {job.job_id} was delivered {deliveries} times and its worker "
          "died each time; it goes to the dead-letter queue.", job.integration,
          job_id=job.job_id, deliveries=deliveries)
    failure = poison_classification(deliveries)
    if rt.settings.dlq_enabled:
        return Step("dead", progress, progress.attempt, strategy="dead-letter-queue",
                    failure=failure, reason=failure.message)
    return Step("failed", progress, progress.attempt, strategy="dead-letter-queue",
                failure=failure, reason=failure.message)


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
