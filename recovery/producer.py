"""`enqueue`: the producer's edge. Everything is validated before anything is sent or written."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from recovery.audit.batch import next_seq
from recovery.jobs import JobSpec, new_job_id, utc_now_iso
from recovery.redact import redact_params
from recovery.registry import Registry, UnknownIntegrationError
from recovery.urlguard import UnsafeHeaderError, UnsafePathError, validate_headers, validate_path

if TYPE_CHECKING:
    from recovery.runtime import Runtime

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_BODY_BYTES = 1024 * 1024
MAX_IDEMPOTENCY_KEY = 200
TASK_NAME = "tasks.integration.call"


class EnqueueError(ValueError):
    """The job was refused at the edge; nothing was enqueued or written."""


def _check_method(method: Any) -> str:
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        allowed = ", ".join(sorted(HTTP_METHODS))
        raise EnqueueError(f"{method!r} is not an HTTP method; use one of {allowed}.")
    return method.upper()


def _check_json(name: str, value: Any, limit: int | None = None) -> None:
    try:
        encoded = jsonlib.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EnqueueError(f"The {name} is not JSON-serialisable ({exc}); send plain JSON "
                           "values (objects, arrays, strings, numbers, booleans, null).") from exc
    if limit is not None and len(encoded.encode()) > limit:
        raise EnqueueError(f"The {name} is {len(encoded.encode())} bytes, over the limit of "
                           f"{limit} bytes (1 MiB); send a reference to large data instead.")


def _check_params(params: Any) -> dict[str, Any] | None:
    if params is None:
        return None
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise EnqueueError("The query parameters must be a mapping with string names.")
    _check_json("query parameters", dict(params), MAX_BODY_BYTES)
    return dict(params)


def _check_key(key: Any) -> str:
    if key is None:
        return new_job_id()
    if (not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY
            or not key.isprintable()):
        raise EnqueueError(f"The idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} printable "
                           f"characters, got {str(key)[:60]!r}.")
    return key


def build_job(registry: Registry, integration: str, method: str, path: str, *, json: Any = None,
              params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
              idempotency_key: str | None = None) -> JobSpec:
    """A validated job, or EnqueueError naming what was wrong."""
    try:
        registry.get(integration)
    except UnknownIntegrationError as exc:
        raise EnqueueError(str(exc)) from exc
    verb = _check_method(method)
    try:
        safe_path = validate_path(path)
        safe_headers = validate_headers(dict(headers or {}))
    except (UnsafePathError, UnsafeHeaderError) as exc:
        raise EnqueueError(str(exc)) from exc
    except (TypeError, AttributeError) as exc:
        raise EnqueueError("The path must be a string and headers a mapping of strings.") from exc
    _check_json("body", json, MAX_BODY_BYTES)
    return JobSpec(job_id=new_job_id(), integration=integration, method=verb, path=safe_path,
                   json=json, params=_check_params(params), headers=safe_headers,
                   idempotency_key=_check_key(idempotency_key), enqueued_at=utc_now_iso())


def publish_job(job: JobSpec) -> str:
    """Send a validated job to its work queue with redacted reprs for Flower and events."""
    from recovery.celery_app import app
    from recovery.crypto import task_serializer
    from recovery.jobs import Progress
    from recovery.worker import task_reprs

    app.send_task(TASK_NAME, kwargs={"job": job.to_message()}, task_id=job.job_id,
                  serializer=task_serializer(), **task_reprs(job, Progress()))
    return job.job_id


def enqueue(integration: str, method: str, path: str, *, json: Any = None,
            params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
            idempotency_key: str | None = None) -> str:
    """Validate and enqueue one integration call; returns the job id."""
    from recovery.runtime import get_runtime

    runtime = get_runtime()
    job = build_job(runtime.registry, integration, method, path, json=json, params=params,
                    headers=headers, idempotency_key=idempotency_key)
    return submit(runtime, job)


def submit(runtime: Runtime, job: JobSpec) -> str:
    """Publish a validated job, then record it as queued (best effort) in the audit trail."""
    queued_seq = next_seq()  # before the publish: every write a worker makes must outrank it
    publish_job(job)
    runtime.audit.job_queued(job.job_id, job.integration, job.method, job.path,
                             redact_params(job.params or {}), job.idempotency_key,
                             seq=queued_seq)
    return job.job_id
