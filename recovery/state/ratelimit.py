"""Cluster-wide rate limits per integration, and a shared "not before" pause.

Every worker process on every host asks the same Redis keys before calling an integration, so
`RateLimitConfig.max_requests` per `window_ms` holds for the whole cluster. A 429 with
Retry-After pauses the integration for everyone: `pause` moves a shared "not before" time that
`acquire` honours before it looks at the window, and remembers why. An operator sees it with
`recovery-cli ratelimit status` and lifts it with `recovery-cli ratelimit resume` (`resume`).
All decisions run in one Lua script
(`ratelimit.lua`) on the Redis server's clock, so hosts with skewed clocks still agree.

Without Redis (the demo, or while Redis is unreachable) the same semantics hold in-process only.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import redis
import structlog
from redis.commands.core import Script

from recovery.config.registry import RateLimitConfig
from recovery.state import lua
from recovery.state.connection import integration_tag
from recovery.state.scripts import ScriptArg, ScriptCall

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How long to stay on the in-process limiter after Redis failed before trying Redis again.
#: Keeps a dead Redis from costing every job a connect timeout.
REDIS_RETRY_AFTER_S = 5.0
#: The longest pause anything may set, whatever it asks for: 7 days (the longest duration any
#: setting accepts). The pipeline caps Retry-After far below this (RETRY_AFTER_MAX); this
#: bound only keeps a runaway value out of Redis.
MAX_PAUSE_S = 7 * 24 * 3600.0

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class RateLimitUsage(TypedDict):
    used: int
    limit: int
    window_ms: int
    paused_for_s: float
    pause_reason: str  # "" when not paused


def _check_config(integration_id: str, config: RateLimitConfig) -> None:
    if config.window_ms < 1 or config.max_requests < 1:
        raise ValueError(
            f"The rate limit of integration '{integration_id}' must allow at least one request "
            f"in a window of at least 1 ms, got max_requests={config.max_requests} and "
            f"window_ms={config.window_ms}; fix its rate_limit settings."
        )


def _check_pause(integration_id: str, seconds: float) -> float:
    """`seconds` bounded by MAX_PAUSE_S; ValueError for a value that is not a number."""
    if math.isnan(seconds):
        raise ValueError(
            f"A pause for integration '{integration_id}' must be a number of seconds, "
            f"got {seconds!r}."
        )
    if seconds > MAX_PAUSE_S:
        log.warning("rate_limit_pause_capped", integration=integration_id, requested_s=seconds,
                    cap_s=MAX_PAUSE_S)
        return MAX_PAUSE_S
    return seconds


class RedisOutage:
    """Runs a Redis operation, or its in-process stand-in while Redis is unreachable.

    After a connection failure it logs one warning and skips Redis for `retry_after_s`, so a dead
    Redis does not cost every call a connect timeout; the first success afterwards logs that
    Redis is back.
    """

    def __init__(self, component: str, retry_after_s: float = REDIS_RETRY_AFTER_S) -> None:
        self._component = component
        self._retry_after_s = retry_after_s
        self._down_until = 0.0

    def run(self, in_redis: Callable[[], T], in_process: Callable[[], T]) -> T:
        if time.monotonic() < self._down_until:
            return in_process()
        try:
            result = in_redis()
        except _REDIS_DOWN as exc:
            if self._down_until == 0.0:
                log.warning(
                    "redis_unavailable",
                    component=self._component,
                    error=type(exc).__name__,
                    detail="Using in-process state, which this process alone sees, until "
                    "Redis answers again.",
                )
            self._down_until = time.monotonic() + self._retry_after_s
            return in_process()
        if self._down_until:
            log.info("redis_restored", component=self._component)
            self._down_until = 0.0
        return result


class LocalRateLimiter:
    """The in-process equivalent of the cluster limiter: same semantics, one process only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._grants: dict[str, deque[float]] = {}
        self._not_before: dict[str, float] = {}
        self._reasons: dict[str, str] = {}

    def acquire(self, integration_id: str, config: RateLimitConfig) -> float:
        _check_config(integration_id, config)
        window = config.window_ms / 1000
        with self._lock:
            now = self._clock()
            paused = self._paused(integration_id, now)
            if paused > 0:
                return paused
            grants = self._grants.setdefault(integration_id, deque())
            while grants and grants[0] <= now - window:
                grants.popleft()
            if len(grants) < config.max_requests:
                grants.append(now)
                return 0.0
            freeing = grants[len(grants) - config.max_requests]
            return max(freeing + window - now, 0.001)

    def pause(self, integration_id: str, seconds: float, reason: str) -> None:
        seconds = _check_pause(integration_id, seconds)
        if seconds <= 0:
            return
        with self._lock:
            wanted = self._clock() + seconds
            if wanted > self._not_before.get(integration_id, -math.inf):
                self._not_before[integration_id] = wanted
                self._reasons[integration_id] = reason

    def resume(self, integration_id: str) -> float:
        """Lift the pause; the seconds it had left (0.0 when there was none)."""
        with self._lock:
            left = self._paused(integration_id, self._clock())
            self._not_before.pop(integration_id, None)
            self._reasons.pop(integration_id, None)
        return left

    def paused_for(self, integration_id: str) -> float:
        with self._lock:
            return self._paused(integration_id, self._clock())

    def usage(self, integration_id: str, config: RateLimitConfig) -> RateLimitUsage:
        window = config.window_ms / 1000
        with self._lock:
            now = self._clock()
            used = sum(1 for t in self._grants.get(integration_id, ()) if t > now - window)
            paused = self._paused(integration_id, now)
            reason = self._reasons.get(integration_id, "") if paused > 0 else ""
        return RateLimitUsage(used=used, limit=config.max_requests, window_ms=config.window_ms,
                              paused_for_s=paused, pause_reason=reason)

    def _paused(self, integration_id: str, now: float) -> float:
        return max(self._not_before.get(integration_id, now) - now, 0.0)


class ClusterRateLimiter:
    """Rate limits and Retry-After pauses shared by every worker through Redis.

    `redis_client=None` uses the in-process limiter throughout. If Redis becomes unreachable the
    limiter logs a warning and uses the in-process limiter until Redis answers again (it retries
    Redis at most every `REDIS_RETRY_AFTER_S` seconds).
    """

    def __init__(
        self,
        redis_client: redis.Redis | None,
        *,
        key_prefix: str,
        local: LocalRateLimiter | None = None,
    ) -> None:
        self._redis = redis_client
        self._prefix = key_prefix
        self._local = local or LocalRateLimiter()
        self._outage = RedisOutage("rate_limit")
        self._source = lua.load("ratelimit")
        self._script: Script | None = None
        if redis_client is not None:
            self._script = redis_client.register_script(self._source)

    @property
    def shared(self) -> bool:
        """Whether limits live in Redis (False: in this process only)."""
        return self._redis is not None

    def acquire_call(self, integration_id: str, config: RateLimitConfig) -> ScriptCall:
        """The Redis script run of `acquire`; its reply goes to `wait_s`."""
        _check_config(integration_id, config)
        return ScriptCall(self._source, self._keys(integration_id),
                          ["acquire", config.window_ms, config.max_requests, uuid.uuid4().hex])

    @staticmethod
    def wait_s(reply: Any) -> float:
        return float(reply) / 1000

    def acquire(self, integration_id: str, config: RateLimitConfig) -> float:
        """Take a slot: 0.0 when granted (and recorded), else the seconds to wait first."""
        call = self.acquire_call(integration_id, config)
        return self._with_redis(
            lambda: self.wait_s(self._run_call(call)),
            lambda: self._local.acquire(integration_id, config),
        )

    def pause(self, integration_id: str, seconds: float, reason: str) -> None:
        """Let nobody call the integration for `seconds`; an existing longer pause is kept.

        `reason` is kept beside the pause for `recovery-cli ratelimit status`.
        """
        seconds = _check_pause(integration_id, seconds)
        if seconds <= 0:
            return
        paused = self._with_redis(
            lambda: float(self._run(integration_id, "pause", round(seconds * 1000, 3),
                                    reason)) / 1000,
            lambda: self._local_pause(integration_id, seconds, reason),
        )
        log.info(
            "rate_limit_paused",
            integration=integration_id,
            requested_s=seconds,
            paused_for_s=round(paused, 3),
            reason=reason,
        )

    def resume(self, integration_id: str) -> float:
        """Lift the integration's pause for every worker; the seconds it had left.

        The local twin is cleared too, so a process that fell back to it while Redis was
        unreachable does not keep honouring a pause the operator lifted.
        """
        left = self._with_redis(
            lambda: float(self._run(integration_id, "resume")) / 1000,
            lambda: self._local.resume(integration_id),
        )
        self._local.resume(integration_id)
        return left

    def paused_for(self, integration_id: str) -> float:
        """Seconds left on the integration's shared pause (0.0 when it is not paused)."""
        return self._with_redis(
            lambda: float(self._run(integration_id, "paused_for")) / 1000,
            lambda: self._local.paused_for(integration_id),
        )

    def usage(self, integration_id: str, config: RateLimitConfig) -> RateLimitUsage:
        """What the window holds right now, for the CLI; records nothing."""

        def from_redis() -> RateLimitUsage:
            used, paused_ms, reason = self._run(integration_id, "usage", config.window_ms)
            return RateLimitUsage(
                used=int(used),
                limit=config.max_requests,
                window_ms=config.window_ms,
                paused_for_s=float(paused_ms) / 1000,
                pause_reason=reason.decode() if isinstance(reason, bytes) else str(reason),
            )

        return self._with_redis(from_redis, lambda: self._local.usage(integration_id, config))

    def _local_pause(self, integration_id: str, seconds: float, reason: str) -> float:
        self._local.pause(integration_id, seconds, reason)
        return self._local.paused_for(integration_id)

    def _base(self, integration_id: str) -> str:
        return f"{self._prefix}ratelimit:{integration_tag(self._redis, integration_id)}"

    def _keys(self, integration_id: str) -> list[str]:
        base = self._base(integration_id)
        return [f"{base}:log", f"{base}:not_before"]

    def _run(self, integration_id: str, op: ScriptArg, *args: ScriptArg) -> Any:
        """An operation with the pause-reason key too (acquire, in the gate, never needs it)."""
        keys = [*self._keys(integration_id), f"{self._base(integration_id)}:reason"]
        return self._run_call(ScriptCall(self._source, keys, [op, *args]))

    def _run_call(self, call: ScriptCall) -> Any:
        assert self._script is not None
        return self._script(keys=call.keys, args=call.args)

    def _with_redis(self, in_redis: Callable[[], T], in_process: Callable[[], T]) -> T:
        if self._redis is None:
            return in_process()
        return self._outage.run(in_redis, in_process)
