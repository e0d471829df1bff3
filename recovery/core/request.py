"""The producer's validation: a request becomes a `JobSpec`, or an `EnqueueError` sentence.

A job is refused, and nothing enqueued or audited, when it names an unknown integration or
method, has a path that could leave the base URL (`urlguard`), a header that is unsafe
(`urlguard.validate_headers`) or one the integration sets itself, an idempotency key that could
not travel as a header value, a body or parameters that are not plain JSON, or when the whole
request is over MAX_REQUEST_BYTES. Pure, so that a DLQ replay re-runs the very same checks
(`recovery.dlq.validate`) without the engine.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Mapping
from typing import Any

from recovery.config.queues import TASK_MODULES
from recovery.config.registry import Integration, Registry, UnknownIntegrationError
from recovery.config.settings import get_settings
from recovery.config.urlguard import (
    UnsafeHeaderError,
    UnsafePathError,
    validate_headers,
    validate_path,
)
from recovery.core.message import JobSpec, new_job_id, utc_now_iso

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_IDEMPOTENCY_KEY = 200
IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: the key travels as a header value
#: A Celery task name: dotted Python identifiers (`myapp.tasks.charge_done`).
_TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
MAX_TASK_NAME = 200
#: This system's own tasks (and Celery's): a callback must be a task of the producer's app.
RESERVED_TASK_PREFIXES = (*(f"{module}." for module in TASK_MODULES), "celery.")


class EnqueueError(ValueError):
    """The job was refused at the edge; nothing was enqueued or written."""


def _check_method(method: Any) -> str:
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        allowed = ", ".join(sorted(HTTP_METHODS))
        raise EnqueueError(f"{method!r} is not an HTTP method; use one of {allowed}.")
    return method.upper()


def _json_bytes(name: str, value: Any) -> int:
    """The size of `value` as JSON, or EnqueueError when it is not plain JSON."""
    try:
        encoded = jsonlib.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EnqueueError(f"The {name} is not JSON-serialisable ({exc}); send plain JSON "
                           "values (objects, arrays, strings, numbers, booleans, null).") from exc
    return len(encoded.encode())


def _check_params(params: Any) -> dict[str, Any] | None:
    if params is None:
        return None
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise EnqueueError("The query parameters must be a mapping with string names.")
    return dict(params)


def _check_key(key: Any) -> str:
    if key is None:
        return ""
    if not isinstance(key, str) or len(key) > MAX_IDEMPOTENCY_KEY or not _KEY_CHARS.fullmatch(key):
        raise EnqueueError(f"The idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII "
                           "characters (letters, digits, punctuation; no spaces), because it is "
                           f"sent as the {IDEMPOTENCY_HEADER} header; got {str(key)[:60]!r}.")
    return key


def check_callback(option: str, name: Any) -> str | None:
    """A callback task name (`on_success`, `on_failure`), or EnqueueError saying why not."""
    if name is None:
        return None
    if (not isinstance(name, str) or len(name) > MAX_TASK_NAME
            or not _TASK_NAME.fullmatch(name)):
        raise EnqueueError(f"{option} must name a Celery task of your app, dotted Python names "
                           f"of at most {MAX_TASK_NAME} characters such as "
                           f"'myapp.tasks.charge_done'; got {str(name)[:60]!r}.")
    if name.startswith(RESERVED_TASK_PREFIXES):
        raise EnqueueError(f"{option} names {name!r}, a task of this system itself; name a "
                           "task of your own app that takes the outcome as its argument.")
    return name


def _reserved_headers(integration: Integration) -> dict[str, str]:
    """Lower-cased names the integration sets on every call, each with why a job may not."""
    reserved = {name.lower(): "from its configuration" for name in integration.headers}
    if integration.oauth is not None:
        reserved["authorization"] = "from its OAuth token"
    for fallback in integration.fallbacks:  # an api fallback's own credentials
        reserved.update({name.lower(): "for its api fallback" for name in fallback.headers})
    return reserved


def _check_headers(integration: Integration, headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    try:
        safe = validate_headers(headers)
    except UnsafeHeaderError as exc:
        raise EnqueueError(str(exc)) from exc
    reserved = _reserved_headers(integration)
    for name in safe:
        if name.lower() == IDEMPOTENCY_HEADER.lower():
            raise EnqueueError(f"The header {name!r} is set from the job's idempotency key; pass "
                               "the key as idempotency_key (--idempotency-key) instead.")
        if name.lower() in reserved:
            raise EnqueueError(f"The header {name!r} is set by integration {integration.id!r} "
                               f"itself ({reserved[name.lower()]}); a job cannot replace it, so "
                               "remove it.")
    return safe


def _check_size(json: Any, params: dict[str, Any] | None, headers: dict[str, str],
                limit: int) -> None:
    """One cap on the whole request: body and parameters as JSON, headers as sent."""
    body = 0 if json is None else _json_bytes("body", json)
    query = 0 if params is None else _json_bytes("query parameters", params)
    head = sum(len(name) + len(value) + 4 for name, value in headers.items())  # "N: V\r\n"
    total = body + query + head
    if total > limit:
        raise EnqueueError(
            f"The request is {total} bytes (body {body}, query parameters {query}, headers "
            f"{head}), over the limit of {limit} bytes (MAX_REQUEST_BYTES); send a reference to "
            "large data instead.")


def build_job(registry: Registry, integration: str, method: str, path: str, *, json: Any = None,
              params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
              idempotency_key: str | None = None,
              max_request_bytes: int | None = None, on_success: str | None = None,
              on_failure: str | None = None) -> JobSpec:
    """A validated job, or EnqueueError naming what was wrong.

    `max_request_bytes` defaults to the MAX_REQUEST_BYTES setting.
    """
    try:
        target = registry.get(integration)
    except UnknownIntegrationError as exc:
        raise EnqueueError(str(exc)) from exc
    verb = _check_method(method)
    try:
        safe_path = validate_path(path)
    except UnsafePathError as exc:
        raise EnqueueError(str(exc)) from exc
    safe_headers = _check_headers(target, headers)
    key = _check_key(idempotency_key)
    checked_params = _check_params(params)
    success_task = check_callback("on_success", on_success)
    failure_task = check_callback("on_failure", on_failure)
    limit = get_settings().max_request_bytes if max_request_bytes is None else max_request_bytes
    _check_size(json, checked_params, safe_headers, limit)
    job_id = new_job_id()  # also the key when the caller gave none (`recovery.state.idempotency`)
    return JobSpec(job_id=job_id, integration=integration, method=verb, path=safe_path,
                   json=json, params=checked_params, headers=safe_headers,
                   idempotency_key=key or job_id, enqueued_at=utc_now_iso(),
                   on_success=success_task, on_failure=failure_task)
