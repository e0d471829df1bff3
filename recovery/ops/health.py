"""Health checks: probe an integration's health endpoint and let the result heal its breaker.

One check is a GET of `health_check.endpoint` with `health_check.timeout_ms` per try, retried
with the `backoff` library (`HEALTH_CHECK_TRIES`, default 2) when the failure is transient.
It is recorded in the audit trail and the metrics. With `ENABLE_AUTO_RECOVERY`:

- a healthy check while the breaker is open (or half-open) closes it: the check was the probe,
  so no user job is spent finding out that the dependency is back;
- `failure_threshold` failed checks in a row (counted in Redis, shared by every worker) open a
  closed breaker before jobs find out. It opens for the breaker's reset timeout; after that,
  probing resumes as usual, so a broken health endpoint cannot block a working API for long.

Each of these raises an alert, and so does the failure streak reaching the threshold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import backoff
import redis
import requests
import structlog

from recovery.config.registry import HealthCheckConfig, Integration
from recovery.core.errors import classify
from recovery.engine.http import send
from recovery.engine.runtime import Runtime
from recovery.telemetry.alerts import alert
from recovery.telemetry.metrics import observe_health_check

log = structlog.get_logger(__name__)

RETRY_BASE_DELAY_S = 0.2
RETRY_MAX_DELAY_S = 2.0
STREAK_MIN_TTL_S = 24 * 3600

BreakerAction = Literal["none", "closed", "opened"]
AlertFn = Callable[..., None]


@dataclass(frozen=True)
class ProbeResult:
    """One GET of the health endpoint."""

    ok: bool
    http_status: int | None
    latency_ms: int
    error: str | None
    retryable: bool


@dataclass(frozen=True)
class HealthReport:
    """What one health check found and what it did about the breaker."""

    integration: str
    ok: bool
    http_status: int | None
    latency_ms: int
    error: str | None
    tries: int
    consecutive_failures: int
    breaker_action: BreakerAction

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Unhealthy(Exception):
    """A transient failure that the backoff loop should retry."""

    def __init__(self, result: ProbeResult) -> None:
        super().__init__(result.error)
        self.result = result


def probe(integration: Integration, config: HealthCheckConfig) -> ProbeResult:
    """One GET of the health endpoint; any status below 400 is healthy."""
    clock = time.perf_counter()
    try:
        response = send(integration, "GET", config.endpoint, timeout_s=config.timeout_ms / 1000)
    except requests.RequestException as exc:
        failure = classify(exc)
        return ProbeResult(False, None, _ms_since(clock), failure.message, failure.retryable)
    except ValueError as exc:  # the endpoint or a header was refused by the URL guard
        return ProbeResult(False, None, _ms_since(clock), str(exc), False)
    latency_ms = _ms_since(clock)
    if response.status_code < 400:
        return ProbeResult(True, response.status_code, latency_ms, None, False)
    failure = classify(response=response)
    return ProbeResult(False, response.status_code, latency_ms, failure.message,
                       failure.retryable)


def probe_with_retries(
    integration: Integration, config: HealthCheckConfig, tries: int
) -> tuple[ProbeResult, int]:
    """Probe up to `tries` times with jittered exponential backoff; (last result, tries used)."""
    used = 0

    def once() -> ProbeResult:
        nonlocal used
        used += 1
        result = probe(integration, config)
        if not result.ok and result.retryable:
            raise _Unhealthy(result)
        return result

    retrying = backoff.on_exception(
        backoff.expo, _Unhealthy, max_tries=tries,
        max_time=tries * (config.timeout_ms / 1000 + RETRY_MAX_DELAY_S),
        factor=RETRY_BASE_DELAY_S, max_value=RETRY_MAX_DELAY_S, jitter=backoff.full_jitter,
        logger=None, on_backoff=lambda details: log.info(
            "health_check_retry", integration=integration.id, tries=details["tries"]),
    )(once)
    try:
        return retrying(), used
    except _Unhealthy as exc:
        return exc.result, used


_local_streaks: dict[str, int] = {}
_local_lock = threading.Lock()


class FailureStreak:
    """Consecutive failed checks per integration, in Redis so every worker adds to one count.

    Without Redis (the demo, or Redis unreachable) the count is kept in this process.
    """

    def __init__(self, client: redis.Redis | None, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def key(self, integration_id: str) -> str:
        return f"{self._prefix}health:{integration_id}:failures"

    def failed(self, integration_id: str, ttl_s: int) -> int:
        if self._client is not None:
            try:
                pipe = self._client.pipeline()
                pipe.incr(self.key(integration_id))
                pipe.expire(self.key(integration_id), ttl_s)
                return int(pipe.execute()[0])
            except redis.RedisError as exc:
                log.warning("health_streak_unavailable", error=str(exc))
        with _local_lock:
            _local_streaks[integration_id] = _local_streaks.get(integration_id, 0) + 1
            return _local_streaks[integration_id]

    def succeeded(self, integration_id: str) -> None:
        with _local_lock:
            _local_streaks.pop(integration_id, None)
        if self._client is not None:
            try:
                self._client.delete(self.key(integration_id))
            except redis.RedisError as exc:
                log.warning("health_streak_unavailable", error=str(exc))


def run_health_check(
    integration: Integration, rt: Runtime, *, tries: int | None = None,
    alert_fn: AlertFn = alert,
) -> HealthReport:
    """Check one integration, record the result, and heal or open its breaker as configured."""
    config = integration.health_check
    if config is None:
        raise ValueError(
            f"Integration {integration.id!r} has no health_check; add one to its entry in the "
            "integrations file to check it."
        )
    count = rt.settings.health_check_tries if tries is None else tries
    result, used = probe_with_retries(integration, config, count)
    rt.audit.health_check(integration.id, result.ok, result.latency_ms, result.http_status,
                          result.error)
    observe_health_check(integration.id, result.ok)
    streak = FailureStreak(rt.redis, rt.settings.redis_key_prefix)
    if result.ok:
        streak.succeeded(integration.id)
        failures, action = 0, _heal(integration, rt, result, alert_fn)
    else:
        ttl_s = max(STREAK_MIN_TTL_S, 10 * config.interval_ms // 1000)
        failures = streak.failed(integration.id, ttl_s)
        action = _after_failure(integration, rt, result, failures, alert_fn)
    report = HealthReport(integration.id, result.ok, result.http_status, result.latency_ms,
                          result.error, used, failures, action)
    log.info("health_check", **report.to_dict())
    return report


def _heal(integration: Integration, rt: Runtime, result: ProbeResult,
          alert_fn: AlertFn) -> BreakerAction:
    if not rt.settings.enable_auto_recovery:
        return "none"
    breaker = rt.breaker(integration)
    state = breaker.snapshot().state
    if state not in ("open", "half_open"):
        return "none"
    breaker.force_close(f"health check of {integration.id} succeeded")
    alert_fn(
        "breaker_closed_by_health_check",
        f"The health check of '{integration.id}' succeeded while its circuit breaker was "
        f"{state.replace('_', '-')}, so the breaker was closed and jobs flow again.",
        integration=integration.id, http_status=result.http_status,
        latency_ms=result.latency_ms,
    )
    return "closed"


def _after_failure(integration: Integration, rt: Runtime, result: ProbeResult, failures: int,
                   alert_fn: AlertFn) -> BreakerAction:
    config = integration.health_check
    assert config is not None
    if failures < config.failure_threshold:
        return "none"
    if failures == config.failure_threshold:
        alert_fn(
            "health_check_failing",
            f"The health check of '{integration.id}' failed {failures} times in a row; "
            f"last error: {result.error}",
            integration=integration.id, consecutive_failures=failures,
            http_status=result.http_status,
        )
    if not rt.settings.enable_auto_recovery:
        return "none"
    breaker = rt.breaker(integration)
    if breaker.snapshot().state != "closed":
        return "none"
    breaker.force_open(f"health check of {integration.id} failed {failures} times in a row")
    return "opened"


def _ms_since(clock: float) -> int:
    return int((time.perf_counter() - clock) * 1000)
