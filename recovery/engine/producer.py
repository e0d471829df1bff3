"""`enqueue`: the producer's edge. Everything is validated (`recovery.core.request`) before
anything is sent or written; then the job is published and recorded as queued.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from recovery import JobHandle
from recovery.audit.ops import next_seq
from recovery.core.message import TASK_NAME, JobSpec, Progress, task_reprs
from recovery.core.request import EnqueueError, build_job
from recovery.state.idempotency import (
    IdempotencyStore,
    KeyReusedError,
    is_generated,
    request_fingerprint,
)

#: Records a published job as queued in the audit trail, given the job and the sequence number
#: taken before the publish (`recovery.audit.ops.next_seq`).
RecordQueued = Callable[[JobSpec, int], object]


def publish_job(job: JobSpec) -> str:
    """Send a validated job to its work queue with redacted reprs for Flower and events."""
    # Imported when a job is sent: building one must not load Celery.
    from recovery.celery_base import app
    from recovery.core.crypto import task_serializer

    app.send_task(TASK_NAME, kwargs={"job": job.to_message()}, task_id=job.job_id,
                  serializer=task_serializer(), **task_reprs(job, Progress()))
    return job.job_id


def enqueue(integration: str, method: str, path: str, *, json: Any = None,
            params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
            idempotency_key: str | None = None, on_success: str | None = None,
            on_failure: str | None = None) -> JobHandle:
    """Validate and enqueue one integration call; returns its handle (the job id).

    Uses the producer's runtime (`recovery.engine.producer_runtime`): Redis and the broker
    only, no database connection; the "queued" audit row goes through the Redis spool."""
    # Imported when a job is sent: building one must not load Redis clients or Celery.
    from recovery.engine.producer_runtime import get_producer_runtime

    runtime = get_producer_runtime()
    job = build_job(runtime.registry, integration, method, path, json=json, params=params,
                    headers=headers, idempotency_key=idempotency_key,
                    max_request_bytes=runtime.settings.max_request_bytes,
                    on_success=on_success, on_failure=on_failure)
    return submit(runtime.idempotency, job, runtime.record_queued)


def submit(idempotency: IdempotencyStore, job: JobSpec,
           record_queued: RecordQueued) -> JobHandle:
    """Refuse a caller's idempotency key reused with another request, publish the job, then
    record it as queued with a sequence number taken before the publish, so that every write
    a worker makes about the job outranks "queued" whichever reaches the database first."""
    if not is_generated(job.idempotency_key, job.job_id):  # only a caller's key can be reused
        try:
            idempotency.remember_request(
                job.integration, job.idempotency_key, job.job_id,
                request_fingerprint(job.method, job.path, job.params, job.json))
        except KeyReusedError as exc:
            raise EnqueueError(str(exc)) from exc
    queued_seq = next_seq()
    publish_job(job)
    record_queued(job, queued_seq)
    return JobHandle(job.job_id)
