"""Values the circuit breaker hands out: permits, snapshots, transitions and its refusal."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import pybreaker

from recovery.config.registry import BreakerConfig

State = Literal["closed", "open", "half_open"]
Outcome = Literal["success", "failure", "neutral"]

#: (integration, from_state, to_state, reason, at) — called once per transition, by the process
#: whose decision made it.
TransitionListener = Callable[[str, str, str, str, datetime], None]


class BreakerOpenError(pybreaker.CircuitBreakerError):
    """The breaker refused a call: it is open, or half-open with every probe slot taken.

    A subclass of `pybreaker.CircuitBreakerError`, so code written against pybreaker still
    catches it.
    """

    def __init__(
        self, integration: str, retry_after_s: float,
        state: Literal["open", "half_open"] = "open",
    ) -> None:
        self.integration = integration
        self.retry_after_s = retry_after_s
        self.state = state
        if state == "half_open":
            message = (
                f"Circuit breaker for '{integration}' is half-open and its probe calls are "
                f"taken; try again in {retry_after_s:.1f} s."
            )
        else:
            message = (
                f"Circuit breaker for '{integration}' is open; next probe allowed in "
                f"{retry_after_s:.1f} s."
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[type[BreakerOpenError], tuple[str, float, str]]:
        return (type(self), (self.integration, self.retry_after_s, self.state))


@dataclass(frozen=True)
class Permit:
    """Leave to make one call. Hand it back to `ClusterBreaker.record` with the outcome.

    `token` is opaque: it names the backend and the breaker epoch the permit was granted in and,
    for a half-open probe, the probe's lease. It is None when the breaker is disabled.
    """

    integration: str
    probe: bool
    token: str | None


@dataclass(frozen=True)
class BreakerSnapshot:
    integration: str
    state: Literal["closed", "open", "half_open", "disabled"]
    consecutive_failures: int
    window_calls: int
    window_failures: int
    opened_at: datetime | None
    time_to_half_open_s: float | None
    probes_in_flight: int
    backend: Literal["redis", "local"]
    #: Failed probes in a row; each one multiplied the open time (a closing resets it to 0).
    failed_probes: int = 0
    #: Length of the current (or, while half-open, the last) open period; None while closed.
    open_ms: int | None = None


@dataclass(frozen=True)
class Transition:
    from_state: str
    to_state: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class Grant:
    """A backend's answer to acquire."""

    granted: bool
    probe: bool
    epoch: int
    wait_s: float
    state: State
    transition: Transition | None = None


@dataclass(frozen=True)
class RawSnapshot:
    """A backend's view of the state, before it is dressed as a `BreakerSnapshot`."""

    state: State
    consecutive_failures: int
    opened_at_ms: int | None
    open_until_ms: int | None
    probes_in_flight: int
    window_calls: int
    window_failures: int
    now_ms: int
    failed_probes: int


@dataclass(frozen=True)
class Limits:
    """The numbers a backend decides with, in milliseconds (derived from `BreakerConfig`)."""

    threshold: int
    reset_ms: int
    max_reset_ms: int
    reset_factor: float
    lease_ms: int
    max_probes: int
    failure_rate: float | None
    window_ms: int
    minimum_calls: int
    success_threshold: int
    ttl_ms: int

    @classmethod
    def from_config(
        cls, integration: str, config: BreakerConfig, success_threshold: int
    ) -> Limits:
        _check(integration, config, success_threshold)
        day_ms = 86_400_000
        return cls(
            threshold=config.threshold,
            reset_ms=config.reset_timeout_ms,
            max_reset_ms=config.reset_cap_ms,
            reset_factor=config.reset_backoff_factor,
            lease_ms=config.call_timeout_ms,
            max_probes=config.half_open_max_calls,
            failure_rate=config.failure_rate,
            window_ms=config.window_ms,
            minimum_calls=max(1, config.minimum_calls),
            success_threshold=success_threshold,
            ttl_ms=max(
                day_ms, 2 * config.window_ms, 2 * config.reset_cap_ms,
                2 * config.call_timeout_ms,
            ),
        )

    def open_ms(self, failed_probes: int) -> int:
        """How long to stay open after `failed_probes` failed probes in a row.

        min(reset_ms * reset_factor ** failed_probes, max_reset_ms) in whole ms: the same
        arithmetic (IEEE doubles, floored) as `open_ms_for` in breaker.lua, so both backends
        agree to the millisecond. Lua's power overflows to infinity where Python raises.
        """
        try:
            grown = self.reset_ms * self.reset_factor ** failed_probes
        except OverflowError:
            return self.max_reset_ms
        return math.floor(min(grown, self.max_reset_ms))


def _check(integration: str, config: BreakerConfig, success_threshold: int) -> None:
    problems = []
    if config.threshold < 1:
        problems.append(f"threshold must be at least 1, got {config.threshold}")
    if config.half_open_max_calls < 1:
        problems.append(
            f"half_open_max_calls must be at least 1, got {config.half_open_max_calls}"
        )
    if config.call_timeout_ms < 1:
        problems.append(f"call_timeout_ms must be at least 1, got {config.call_timeout_ms}")
    if config.reset_timeout_ms < 0:
        problems.append(f"reset_timeout_ms must not be negative, got {config.reset_timeout_ms}")
    if not 1 <= config.reset_backoff_factor < math.inf:
        problems.append(
            f"reset_backoff_factor must be a finite number of at least 1, "
            f"got {config.reset_backoff_factor}"
        )
    if config.reset_cap_ms < config.reset_timeout_ms:
        problems.append(
            f"max_reset_timeout_ms must be at least reset_timeout_ms ({config.reset_timeout_ms}), "
            f"got {config.reset_cap_ms}"
        )
    if config.window_ms < 1:
        problems.append(f"window_ms must be at least 1, got {config.window_ms}")
    if config.failure_rate is not None and not 0 < config.failure_rate <= 1:
        problems.append(f"failure_rate must be above 0 and at most 1, got {config.failure_rate}")
    if success_threshold < 1:
        problems.append(f"success_threshold must be at least 1, got {success_threshold}")
    if problems:
        raise ValueError(
            f"The circuit breaker settings of '{integration}' are invalid: "
            f"{'; '.join(problems)}. Fix its circuit_breaker settings."
        )


def utc_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
