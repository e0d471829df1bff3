"""Prometheus metrics for every worker process on every host, kept in Redis.

Why Redis and not prometheus_client's multiprocess mode: multiprocess files live in one
directory on one host, so each worker host would need its own exporter, a shared volume in the
compose file and a wiped directory at every start. Redis already carries the breaker and the
broker for the whole cluster; with counters there, one `recovery-cli serve` anywhere exposes what
all workers did, and the numbers survive a worker restart. An observation is one pipelined round
trip (HINCRBYFLOAT), and a failed one is logged and dropped: metrics never fail a job.

State that has its own source of truth is read at scrape time instead of being pushed: the
breaker state from `ClusterBreaker.snapshot()`, queue depths from the broker
(`recovery.telemetry.exposition` turns both into the Prometheus text).
Without Redis (the demo's embedded mode) the numbers stay in the process. `METRICS_ENABLED=false`
turns every observation into a no-op and `/metrics` off.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
import structlog
from prometheus_client.utils import floatToGoString

from recovery.config.settings import get_settings
from recovery.state.connection import shared_client
from recovery.telemetry.metric_labels import MAX_SEGMENT_CHARS as MAX_SEGMENT_CHARS  # re-exported
from recovery.telemetry.metric_labels import MAX_SEGMENTS as MAX_SEGMENTS  # re-exported
from recovery.telemetry.metric_labels import EndpointBound, local_admit, redis_admit
from recovery.telemetry.metric_labels import endpoint_label as endpoint_label  # re-exported

log = structlog.get_logger(__name__)

BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
WARN_EVERY_S = 60.0
FLUSH_INTERVAL_S = 1.0

Update = tuple[str, str, float]  # (metric, field, amount)


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # counter | histogram
    help: str
    labels: tuple[str, ...]


SPECS = {
    spec.name: spec
    for spec in (
        Spec("api_calls_total", "counter", "Outbound API calls by outcome.",
             ("integration", "endpoint", "method", "status")),
        Spec("api_call_duration_seconds", "histogram", "Outbound API call duration.",
             ("integration", "endpoint", "method")),
        Spec("error_recovery_attempts_total", "counter",
             "Recoveries attempted, by strategy and whether the job ended well.",
             ("strategy", "success")),
        Spec("retries_scheduled_total", "counter",
             "Retries and deferrals scheduled, by what set the delay.", ("integration", "source")),
        Spec("health_checks_total", "counter", "Health checks run, by result.",
             ("integration", "ok")),
        Spec("workflow_runs_total", "counter", "Workflow runs ended, by workflow and outcome.",
             ("workflow", "outcome")),
    )
}


class MetricStore(Protocol):
    """Where observations accumulate: one hash of float fields per metric; `endpoints`
    bounds the endpoint labels (`recovery.telemetry.metric_labels`)."""

    endpoints: EndpointBound

    def add(self, updates: Sequence[Update]) -> None: ...

    def read(self, metric: str) -> dict[str, float]: ...


class RedisStore:
    """Cluster-wide counters in Redis hashes under `{prefix}metrics:{metric}`."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self.endpoints = EndpointBound(redis_admit(client, prefix))

    def key(self, metric: str) -> str:
        return f"{self._prefix}metrics:{metric}"

    def add(self, updates: Sequence[Update]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for metric, field, amount in updates:
            pipe.hincrbyfloat(self.key(metric), field, amount)
        pipe.execute()

    def read(self, metric: str) -> dict[str, float]:
        raw: Mapping[bytes, bytes] = self._client.hgetall(self.key(metric))  # type: ignore[assignment]
        return {field.decode(): float(value) for field, value in raw.items()}


class BufferedRedisStore(RedisStore):
    """A RedisStore that sums observations in memory and sends them once a second.

    A job then pays no Redis round trip for its metrics; a scrape sees them at most
    FLUSH_INTERVAL_S late. `flush()` runs at worker-process shutdown and before a local read.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        super().__init__(client, prefix)
        self._pending: dict[tuple[str, str], float] = {}
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="metrics-flush", daemon=True).start()

    def add(self, updates: Sequence[Update]) -> None:
        with self._pending_lock:
            for metric, field, amount in updates:
                self._pending[(metric, field)] = self._pending.get((metric, field), 0.0) + amount

    def flush(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        if pending:
            try:
                super().add([(metric, field, amount)
                             for (metric, field), amount in pending.items()])
            except redis.RedisError:
                with self._pending_lock:
                    for key, amount in pending.items():
                        self._pending[key] = self._pending.get(key, 0.0) + amount
                raise

    def read(self, metric: str) -> dict[str, float]:
        self.flush()
        return super().read(metric)

    def _run(self) -> None:
        while not self._wake.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except redis.RedisError as exc:
                _warn(exc)


class MemoryStore:
    """Counters of this process only (tests, the demo without Redis)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, float]] = {}
        self.endpoints = EndpointBound(local_admit())

    def add(self, updates: Sequence[Update]) -> None:
        with self._lock:
            for metric, field, amount in updates:
                fields = self._data.setdefault(metric, {})
                fields[field] = fields.get(field, 0.0) + amount

    def read(self, metric: str) -> dict[str, float]:
        with self._lock:
            return dict(self._data.get(metric, {}))


_override: MetricStore | None = None
_process_store = MemoryStore()
_last_warning = 0.0
_buffers: dict[tuple[int, str], BufferedRedisStore] = {}
_buffers_lock = threading.Lock()


_redis_source: Callable[[], redis.Redis | None] | None = None


def set_redis_source(source: Callable[[], redis.Redis | None] | None) -> None:
    """Where the runtime's Redis client comes from (the engine registers it when imported, so
    observations share the runtime's connections); without one, a client of REDIS_URL."""
    global _redis_source
    _redis_source = source


def use_store(store: MetricStore | None) -> None:
    """Send observations to `store` (tests, the demo); None goes back to the runtime's Redis."""
    global _override
    _override = store


def current_store() -> MetricStore | None:
    """The store observations go to, or None when `METRICS_ENABLED` is false."""
    settings = get_settings()
    if not settings.metrics_enabled:
        return None
    if _override is not None:
        return _override
    client = (_redis_source() if _redis_source is not None
              else shared_client(settings.redis_url))
    return store_for(client, settings.redis_key_prefix)


def store_for(client: redis.Redis | None, prefix: str) -> MetricStore:
    """The Redis store for a client, or this process's store when there is no Redis."""
    if client is None:
        return _process_store
    with _buffers_lock:
        store = _buffers.get((id(client), prefix))
        if store is None:
            store = _buffers[(id(client), prefix)] = BufferedRedisStore(client, prefix)
        return store


def flush() -> None:
    """Send every buffered observation now (worker-process shutdown, tests)."""
    with _buffers_lock:
        stores = list(_buffers.values())
    for store in stores:
        try:
            store.flush()
        except redis.RedisError as exc:
            _warn(exc)


def _forget_buffers_after_fork() -> None:
    """A child must not send its parent's pending counts again, nor share its thread."""
    _buffers.clear()


os.register_at_fork(after_in_child=_forget_buffers_after_fork)
atexit.register(flush)


# --- observations (called by the pipeline, the health checks and the task adapter) -----------

def status_label(status: int | str | None) -> str:
    """An HTTP status as text, or the error category when no response came (e.g. `network`)."""
    if status is None:
        return "error"
    return str(status)


def observe_call(
    integration: str, method: str, path: str, status: int | str | None, duration_s: float
) -> None:
    """One outbound call: counted by status and timed into the duration histogram."""
    try:
        store = current_store()
        if store is None:
            return
        endpoint = store.endpoints.label(integration, endpoint_label(path))
        verb = method.upper()
        updates = [_counter("api_calls_total", integration, endpoint, verb, status_label(status))]
        updates += _histogram("api_call_duration_seconds", (integration, endpoint, verb),
                              duration_s)
        store.add(updates)
    except Exception as exc:
        _warn(exc)


def observe_recovery(strategy: str, success: bool) -> None:
    """A job that needed recovery ended: well (retried, served by a fallback) or not (DLQ)."""
    _record([_counter("error_recovery_attempts_total", strategy, _flag(success))])


def observe_retry_scheduled(integration: str, source: str) -> None:
    """A retry or deferral was scheduled; `source` says what set the delay."""
    _record([_counter("retries_scheduled_total", integration, source)])


def observe_health_check(integration: str, ok: bool) -> None:
    _record([_counter("health_checks_total", integration, _flag(ok))])


def observe_workflow_run(workflow: str, outcome: str) -> None:
    """A workflow run ended (succeeded, degraded, compensated, dead)."""
    _record([_counter("workflow_runs_total", workflow, outcome)])


def _flag(value: bool) -> str:
    return "true" if value else "false"


@functools.lru_cache(maxsize=4096)
def _field(values: tuple[str, ...]) -> str:
    """A label set as the JSON field name it is stored under (cached: the same few repeat)."""
    return json.dumps(list(values), separators=(",", ":"))


def _counter(metric: str, *labels: str) -> Update:
    return (metric, _field(labels), 1.0)


def _histogram(metric: str, labels: Sequence[str], value: float) -> list[Update]:
    """Non-cumulative bucket counts plus the sum; cumulative counts are built at scrape time."""
    bound = next((floatToGoString(b) for b in BUCKETS if value <= b), "+Inf")
    return [(metric, _field((*labels, "le", bound)), 1.0),
            (metric, _field((*labels, "sum", "")), max(0.0, value))]


def _record(updates: Sequence[Update]) -> None:
    try:
        store = current_store()
        if store is not None:
            store.add(updates)
    except Exception as exc:
        _warn(exc)


def _warn(exc: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARN_EVERY_S:
        _last_warning = now
        log.warning("metrics_write_failed", error=str(exc), error_type=type(exc).__name__)
