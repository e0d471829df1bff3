"""`enqueue`: the producer's edge. Everything is validated (`recovery.core.request`) before
anything is sent or written; then the job is published and recorded as queued.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from recovery import JobHandle
from recovery.audit.sql import next_seq
from recovery.core.message import TASK_NAME, JobSpec, Progress, task_reprs
from recovery.core.redact import policy_for, redact_params
from recovery.core.request import EnqueueError, build_job
from recovery.state.idempotency import KeyReusedError, is_generated, request_fingerprint

if TYPE_CHECKING:
    from recovery.engine.runtime import Runtime


def publish_job(job: JobSpec) -> str:
    """Send a validated job to its work queue with redacted reprs for Flower and events."""
    # Imported when a job is sent: building one must not load Celery or the runtime.
    from recovery.celery_app import app
    from recovery.core.crypto import task_serializer

    app.send_task(TASK_NAME, kwargs={"job": job.to_message()}, task_id=job.job_id,
                  serializer=task_serializer(), **task_reprs(job, Progress()))
    return job.job_id


def enqueue(integration: str, method: str, path: str, *, json: Any = None,
            params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
            idempotency_key: str | None = None, on_success: str | None = None,
            on_failure: str | None = None) -> JobHandle:
    """Validate and enqueue one integration call; returns its handle (the job id)."""
    # Imported when a job is sent: building one must not load Celery or the runtime.
    from recovery.engine.runtime import get_runtime

    runtime = get_runtime()
    job = build_job(runtime.registry, integration, method, path, json=json, params=params,
                    headers=headers, idempotency_key=idempotency_key,
                    max_request_bytes=runtime.settings.max_request_bytes,
                    on_success=on_success, on_failure=on_failure)
    return submit(runtime, job)


def submit(runtime: Runtime, job: JobSpec, *, spool_audit: bool = True) -> JobHandle:
    """Publish a validated job, then record it as queued (best effort) in the audit trail:
    through the Redis audit spool (`spool_audit`, a worker's drain writes it), or at once for
    a caller that reads the job back right away (`recovery-cli enqueue`)."""
    if not is_generated(job.idempotency_key, job.job_id):  # only a caller's key can be reused
        try:
            runtime.idempotency.remember_request(
                job.integration, job.idempotency_key, job.job_id,
                request_fingerprint(job.method, job.path, job.params, job.json))
        except KeyReusedError as exc:
            raise EnqueueError(str(exc)) from exc
    queued_seq = next_seq()  # before the publish: every write a worker makes must outrank it
    publish_job(job)
    runtime.audit.job_queued(job.job_id, job.integration, job.method, job.path,
                             redact_params(job.params or {}, policy_for(job.integration)),
                             job.idempotency_key,
                             seq=queued_seq, spooled=spool_audit)
    return JobHandle(job.job_id)
