"""Test-only fault injection into real worker processes; the runtime never imports this.

A worker started with `--include tests.integration.faults` and RECOVERY_FAULT_INJECT set to
`POINT:TIMES:KIND` makes one collaborator of a delivery raise on its first TIMES calls, counted
across the worker's processes in Redis. KIND `error` raises a RuntimeError whose text carries
FAULT_SECRET (which must never reach a log, the audit trail or the DLQ listing); `redis` raises
redis.ConnectionError (an infrastructure error). The patch is installed when the worker imports
this module, before its pool processes fork.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import redis

ENV = "RECOVERY_FAULT_INJECT"
FAULT_SECRET = "Bearer f4ult-s3cret-t0ken"

# point -> (module, class or None, attribute): where the delivery looks the collaborator up.
POINTS: dict[str, tuple[str, str | None, str]] = {
    "gate": ("recovery.engine.gate", "Gate", "enter"),
    "send": ("recovery.engine.pipeline", None, "send"),
    "classify": ("recovery.engine.pipeline", None, "classify"),
    "audit": ("recovery.audit.writer", "AuditWriter", "job_started"),
    "fallback": ("recovery.engine.pipeline", None, "run_fallbacks"),
    "settle": ("recovery.engine.gate", "Gate", "settle"),
    "dlq_publish": ("recovery.dlq.park", None, "publish"),
    "metrics": ("recovery.telemetry.metrics", None, "observe_call"),
}


def fault(point: str, kind: str) -> BaseException:
    if kind == "redis":
        return redis.ConnectionError(f"injected at {point}: Error 111 connecting. Refused.")
    return RuntimeError(f"injected at {point}: Authorization: {FAULT_SECRET} was refused")


def _counter(point: str) -> Callable[[], int]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    key = f"{os.environ.get('RECOVERY_REDIS_PREFIX', '')}fault:{point}"
    return lambda: int(client.incr(key))


def _wrap(original: Callable[..., Any], point: str, times: int, kind: str) -> Callable[..., Any]:
    count = _counter(point)

    @functools.wraps(original)
    def faulty(*args: Any, **kwargs: Any) -> Any:
        if count() <= times:
            raise fault(point, kind)
        return original(*args, **kwargs)

    return faulty


def install(spec: str) -> None:
    point, times, kind = spec.split(":")
    module_name, class_name, attribute = POINTS[point]
    owner: Any = importlib.import_module(module_name)
    if class_name is not None:
        owner = getattr(owner, class_name)
    setattr(owner, attribute, _wrap(getattr(owner, attribute), point, int(times), kind))


if os.environ.get(ENV):
    install(os.environ[ENV])
