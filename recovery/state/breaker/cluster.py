"""`ClusterBreaker`: one integration's circuit breaker, shared by every worker through Redis.

The flow is pybreaker's state machine (closed -> open -> half-open -> closed or open again),
but every decision is one atomic Lua script on the Redis server's clock, so:

* at most `half_open_max_calls` probes run at a time across the whole cluster, each under a
  lease of `call_timeout_ms` so a probe whose worker died cannot wedge the breaker half-open;
* no lock is held across the guarded call: `acquire` and `record` are separate round trips;
* a transition is reported once, by the process whose script made it;
* each failed probe in a row multiplies the next open period by `reset_backoff_factor`, up to
  `max_reset_timeout_ms` (Polly's break-duration generator, Envoy's ejection multiplier), so a
  long outage costs fewer probes; closing the breaker resets the streak.

Without Redis (`redis_client=None`), or while Redis cannot be reached, the same rules run in
this process only (`local.py`), and a warning says so once per period.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar, cast

import pybreaker
import redis
import structlog

from recovery.config.registry import BreakerConfig
from recovery.state.breaker.local import LocalBackend, local_backend
from recovery.state.breaker.redis_backend import RedisBackend
from recovery.state.breaker.types import (
    BreakerOpenError,
    BreakerSnapshot,
    Grant,
    Limits,
    Outcome,
    Permit,
    RawSnapshot,
    Transition,
    TransitionListener,
    utc_from_ms,
)
from recovery.state.connection import integration_tag
from recovery.state.scripts import ScriptCall

log = structlog.get_logger(__name__)

T = TypeVar("T")
Exclusion = type[BaseException] | Callable[[BaseException], bool]
Listener = TransitionListener | pybreaker.CircuitBreakerListener

#: After Redis failed, decide in-process for this long before trying Redis again, so a dead
#: Redis does not cost every call a connect timeout.
REDIS_RETRY_AFTER_S = 1.0
#: At most one `breaker_redis_unavailable` warning per breaker key per this many seconds.
WARN_PERIOD_S = 60.0

_PYBREAKER_STATE_NAMES = {
    "closed": pybreaker.STATE_CLOSED,
    "open": pybreaker.STATE_OPEN,
    "half_open": pybreaker.STATE_HALF_OPEN,
}

_redis_down_until: dict[str, float] = {}
_last_warned: dict[str, float] = {}
_outage_lock = threading.Lock()


class ClusterBreaker:
    """The circuit breaker of one integration.

    `listeners` may be plain callables `(integration, from, to, reason, at)` or
    `pybreaker.CircuitBreakerListener` objects (their `state_change`, `before_call`, `success`
    and `failure` hooks are called as pybreaker would). `exclude` lists exception types or
    predicates, as in pybreaker, whose exceptions `call` re-raises without counting them: they
    release a probe but neither open nor close the breaker (pybreaker counts them as a success).
    `success_threshold` is the number of successful probes that close a half-open breaker.
    """

    def __init__(
        self,
        redis_client: redis.Redis | None,
        integration_id: str,
        config: BreakerConfig,
        *,
        key_prefix: str,
        listeners: Sequence[Listener] = (),
        exclude: Iterable[Exclusion] = (),
        success_threshold: int = 1,
    ) -> None:
        self.integration = integration_id
        self.config = config
        self.key = f"{key_prefix}breaker:{integration_tag(redis_client, integration_id)}"
        self._limits = Limits.from_config(integration_id, config, success_threshold) if (
            config.enabled) else None
        self._redis = RedisBackend(redis_client, self.key) if redis_client is not None else None
        self._local: LocalBackend = local_backend(self.key)
        self._listeners = list(listeners)
        self._exclude = list(exclude)

    @property
    def name(self) -> str:
        """The integration id (pybreaker listeners read `cb.name`)."""
        return self.integration

    @property
    def backend(self) -> Literal["redis", "local"]:
        return "local" if self._redis is None else "redis"

    def acquire(self) -> Permit:
        """Leave to make one call, or `BreakerOpenError` with how long to wait. One round trip."""
        if self._limits is None:
            return Permit(self.integration, probe=False, token=None)
        limits = self._limits
        probe_id = uuid.uuid4().hex
        tag, grant = self._decide(
            lambda b: b.acquire(limits, probe_id), lambda b: b.acquire(limits, probe_id)
        )
        return self._permit(tag, grant, probe_id)

    def acquire_call(self) -> tuple[ScriptCall, str] | None:
        """The Redis script run of `acquire` and its probe id, for `permit_from`; None when
        `acquire` would not use Redis (breaker off, no Redis, or Redis failed just now)."""
        if (self._limits is None or self._redis is None
                or time.monotonic() < _redis_down_until.get(self.key, 0.0)):
            return None
        probe_id = uuid.uuid4().hex
        return self._redis.acquire_call(self._limits, probe_id), probe_id

    def permit_from(self, reply: Any, probe_id: str) -> Permit:
        """What `acquire` returns or raises, from the reply of an `acquire_call` run."""
        return self._permit("r", RedisBackend.grant(reply), probe_id)

    def _permit(self, tag: Literal["r", "l"], grant: Grant, probe_id: str) -> Permit:
        self._notify(grant.transition)
        if not grant.granted:
            state: Literal["open", "half_open"] = (
                "half_open" if grant.state == "half_open" else "open"
            )
            raise BreakerOpenError(self.integration, grant.wait_s, state)
        return Permit(self.integration, grant.probe, _token(tag, grant, probe_id))

    def record_call(self, permit: Permit, *, success: bool, counts: bool = True
                    ) -> ScriptCall | None:
        """The Redis script run of `record`, for `recorded`; None when `record` would not use
        Redis (breaker off, or a permit of the in-process breaker): call `record` then."""
        if self._limits is None or permit.token is None or self._redis is None:
            return None
        tag, epoch, probe_id = _parse_token(permit.token)
        if tag == "l":
            return None
        return self._redis.record_call(self._limits, epoch, probe_id, _outcome(success, counts))

    def recorded(self, reply: Any) -> None:
        """Report the transition, if any, in the reply of a `record_call` run."""
        self._notify(RedisBackend.transition(reply))

    def record(self, permit: Permit, *, success: bool, counts: bool = True) -> None:
        """Report how the permitted call went. One round trip.

        `counts=False` (client errors, authentication failures) is neutral: a probe's slot is
        released, nothing else changes.
        """
        if self._limits is None or permit.token is None:
            return
        limits = self._limits
        tag, epoch, probe_id = _parse_token(permit.token)
        outcome = _outcome(success, counts)
        if tag == "l" or self._redis is None:
            self._notify(self._local.record(limits, epoch if tag == "l" else None, probe_id,
                                            outcome))
            return
        _, transition = self._decide(
            lambda b: b.record(limits, epoch, probe_id, outcome),
            lambda b: b.record(limits, None, probe_id, outcome),
        )
        self._notify(transition)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `func` under the breaker, pybreaker style, without holding any lock across it.

        Raises `BreakerOpenError` (a `pybreaker.CircuitBreakerError`) when refused; otherwise
        returns what `func` returns or re-raises what it raised, after recording the outcome.
        """
        permit = self.acquire()
        py_listeners = self._pybreaker_listeners()
        for listener in py_listeners:
            listener.before_call(cast(pybreaker.CircuitBreaker, self), func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            system_error = isinstance(exc, Exception) and self._is_system_error(exc)
            self.record(permit, success=False, counts=system_error)
            for listener in py_listeners:
                if system_error:
                    listener.failure(cast(pybreaker.CircuitBreaker, self), exc)
                else:
                    listener.success(cast(pybreaker.CircuitBreaker, self))
            raise
        self.record(permit, success=True)
        for listener in py_listeners:
            listener.success(cast(pybreaker.CircuitBreaker, self))
        return result

    def __call__(self, func: Callable[..., T]) -> Callable[..., T]:
        """Decorate `func` so every call goes through `call`."""

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> T:
            return self.call(func, *args, **kwargs)

        return guarded

    def snapshot(self) -> BreakerSnapshot:
        if self._limits is None:
            return BreakerSnapshot(self.integration, "disabled", 0, 0, 0, None, None, 0,
                                   self.backend)
        limits = self._limits
        tag, raw = self._decide(lambda b: b.snapshot(limits), lambda b: b.snapshot(limits))
        return _snapshot_from_raw(self.integration, raw, "redis" if tag == "r" else "local")

    def force_open(self, reason: str, *, duration_s: float | None = None) -> None:
        """Open now, for `duration_s` (default: the reset timeout); then probing resumes."""
        if self._limits is None:
            return
        limits = self._limits
        open_ms = limits.reset_ms if duration_s is None else max(0, round(duration_s * 1000))
        why = f"forced: {reason}"
        _, transition = self._decide(
            lambda b: b.force(limits, "open", open_ms, why),
            lambda b: b.force(limits, "open", open_ms, why),
        )
        self._notify(transition)

    def force_close(self, reason: str) -> None:
        """Close now and clear the counters (e.g. a health check saw the dependency recover)."""
        if self._limits is None:
            return
        limits = self._limits
        why = f"forced: {reason}"
        _, transition = self._decide(
            lambda b: b.force(limits, "close", 0, why),
            lambda b: b.force(limits, "close", 0, why),
        )
        self._notify(transition)

    def _decide(
        self,
        in_redis: Callable[[RedisBackend], T],
        in_process: Callable[[LocalBackend], T],
    ) -> tuple[Literal["r", "l"], T]:
        """Run a decision in Redis, or in this process while Redis is out of reach."""
        if self._redis is None or time.monotonic() < _redis_down_until.get(self.key, 0.0):
            return "l", in_process(self._local)
        try:
            return "r", in_redis(self._redis)
        except redis.exceptions.RedisError as exc:
            _redis_failed(self.key, self.integration, exc)
            return "l", in_process(self._local)

    def _notify(self, transition: Transition | None) -> None:
        if transition is None:
            return
        for listener in self._listeners:
            try:
                if isinstance(listener, pybreaker.CircuitBreakerListener):
                    listener.state_change(
                        cast(pybreaker.CircuitBreaker, self),
                        self._pybreaker_state(transition.from_state),
                        self._pybreaker_state(transition.to_state),
                    )
                else:
                    listener(self.integration, transition.from_state, transition.to_state,
                             transition.reason, transition.at)
            except Exception:
                log.exception("breaker_listener_failed", integration=self.integration,
                              to_state=transition.to_state)

    def _pybreaker_state(self, state: str) -> pybreaker.CircuitBreakerState:
        return pybreaker.CircuitBreakerState(
            cast(pybreaker.CircuitBreaker, self), _PYBREAKER_STATE_NAMES.get(state, state)
        )

    def _pybreaker_listeners(self) -> list[pybreaker.CircuitBreakerListener]:
        return [x for x in self._listeners if isinstance(x, pybreaker.CircuitBreakerListener)]

    def _is_system_error(self, exc: Exception) -> bool:
        for exclusion in self._exclude:
            if isinstance(exclusion, type):
                if isinstance(exc, exclusion):
                    return False
            elif exclusion(exc):
                return False
        return True


def _outcome(success: bool, counts: bool) -> Outcome:
    return "neutral" if not counts else "success" if success else "failure"


def _token(tag: str, grant: Grant, probe_id: str) -> str:
    return f"{tag}:{grant.epoch}:{probe_id if grant.probe else ''}"


def _parse_token(token: str) -> tuple[str, int, str]:
    tag, epoch, probe_id = token.split(":", 2)
    return tag, int(epoch), probe_id


def _snapshot_from_raw(integration: str, raw: RawSnapshot, backend: Literal["redis", "local"]
           ) -> BreakerSnapshot:
    to_half_open: float | None = None
    open_ms: int | None = None
    if raw.state == "open" and raw.open_until_ms is not None:
        to_half_open = max(0.0, (raw.open_until_ms - raw.now_ms) / 1000)
    if raw.state != "closed" and raw.open_until_ms is not None and raw.opened_at_ms is not None:
        open_ms = raw.open_until_ms - raw.opened_at_ms
    return BreakerSnapshot(
        integration=integration,
        state=raw.state,
        consecutive_failures=raw.consecutive_failures,
        window_calls=raw.window_calls,
        window_failures=raw.window_failures,
        opened_at=utc_from_ms(raw.opened_at_ms) if raw.opened_at_ms is not None else None,
        time_to_half_open_s=to_half_open,
        probes_in_flight=raw.probes_in_flight,
        backend=backend,
        failed_probes=raw.failed_probes,
        open_ms=open_ms,
    )


def _redis_failed(key: str, integration: str, exc: Exception) -> None:
    now = time.monotonic()
    with _outage_lock:
        _redis_down_until[key] = now + REDIS_RETRY_AFTER_S
        if now - _last_warned.get(key, -WARN_PERIOD_S) < WARN_PERIOD_S:
            return
        _last_warned[key] = now
    log.warning(
        "breaker_redis_unavailable",
        integration=integration,
        error=f"{type(exc).__name__}: {exc}",
        fallback="in-process breaker",
        retry_after_s=REDIS_RETRY_AFTER_S,
    )

