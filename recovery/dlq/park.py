"""Publishing a dead job to the `dlq` broker queue, mirrored in the audit trail."""

from __future__ import annotations

from collections.abc import Callable

import redis
import structlog

from recovery.audit.writer import DeadLetterRecord
from recovery.config.queues import DLQ_QUEUE
from recovery.core.message import JobSpec, parse_time, utc_now_iso
from recovery.core.step import Step
from recovery.dlq.cap import enforce_cap
from recovery.dlq.context import DlqRuntime
from recovery.dlq.envelope import Envelope, envelope_for
from recovery.dlq.publishing import publish_message

log = structlog.get_logger(__name__)


def publish(envelope: Envelope, queue_name: str = DLQ_QUEUE) -> None:
    """Publish an envelope (its sealed original included) to the dead-letter queue."""
    publish_message(envelope.sealed_message(), queue_name)


class DeadLetterPublishError(RuntimeError):
    """The broker did not take a dead letter; the job must not be acknowledged as done."""


def park(rt: DlqRuntime, job: JobSpec, step: Step,
         sink: Callable[[Envelope], None] | None = None, *,
         keep_bounded: bool = False) -> Envelope:
    """Dead-letter a job and return the envelope it parked. The publish (to `sink`, else the
    broker's `dlq`) comes first: if it fails, DeadLetterPublishError propagates and nothing is
    recorded (the task adapter rejects the message so the broker delivers it again). Then the
    `dead_letters` row is written; the job's own `dead` status is not: that is
    `recovery.engine.outcome.park_dead`'s, the one writer of final statuses. The DLQ's cap
    (`recovery.dlq.cap`) is enforced last when `keep_bounded`: what it trims is archived in
    PostgreSQL, not dropped."""
    failure = step.failure
    envelope = envelope_for(
        job, categories=sorted(failure.categories) if failure else [],
        last_status=failure.status if failure else None,
        message=failure.message if failure else step.reason,
        attempts=step.attempts, dead_at=utc_now_iso())
    try:
        (sink or publish)(envelope)
    except (redis.RedisError, OSError) as exc:
        raise DeadLetterPublishError(
            f"Could not publish job {job.job_id} to the dead-letter queue ({exc}); "
            "the broker will deliver the job again.") from exc
    rt.audit.dead_letter(DeadLetterRecord(
        job_id=job.job_id, integration=job.integration, task_name=envelope.task_name,
        error_categories=envelope.error_categories, last_status=envelope.last_status,
        message=envelope.message, attempts=envelope.attempts,
        first_enqueued_at=parse_time(envelope.first_enqueued_at),
        envelope=envelope.view(), replay_count=envelope.replay_count,
        dead_at=parse_time(envelope.dead_at)))
    log.error("job_dead_lettered", job_id=job.job_id, reason=step.reason)
    if keep_bounded:
        enforce_cap(rt, actor="park")  # never fails the park
    return envelope
