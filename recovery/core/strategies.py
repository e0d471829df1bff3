"""Recovery strategies: which retries, delays, breaker accounting, fallbacks and alerts a
failure gets, as small composable values (in the manner of tenacity's stop and wait objects).

`strategy_for(integration, classification)` resolves one `Strategy` from three layers, each
overriding the one before key by key:

1. `DEFAULT_TABLE`, the original design's table; a key it leaves out takes today's value
   from the integration (its `retry` block for attempts and delays, the error class for
   whether to retry and whether the breaker counts, every fallback in priority order);
2. the integration's `strategies:` block for the failure's primary category;
3. its block for the failure's HTTP status, if it has one.

The defaults, against the table:

- network, transient: network-retry, the retry block (3 attempts, factor 2 by default);
- rate_limit: rate-limit-backoff, 5 attempts waiting 5 s, 15 s, 45 s, 135 s (factor 3, capped
  at 10 min; a longer Retry-After wins), then the cache, then the other fallbacks;
- server_error: server-error-circuit, the retry block, counting toward the breaker, then the
  api fallbacks, then the others;
- authentication: auth-token-refresh, 2 calls (the call, then one with a refreshed token),
  then an alert;
- unknown: dead-letter-queue, at once: no retry, no fallback;
- client_error (dead-letter-queue) and response_too_large (response-size-limit): no retry,
  no fallback, as before.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from recovery.config.strategies import OTHERS, StrategyBlock
from recovery.core.errors import Classification

if TYPE_CHECKING:
    from recovery.config.registry import FallbackConfig, Integration, RetryConfig

RATE_LIMIT_MAX_DELAY_MS = 600_000  # the default RETRY_AFTER_MAX and MAX_DEFER_WINDOW

DEFAULT_TABLE: Mapping[str, StrategyBlock] = MappingProxyType({
    "network": StrategyBlock(name="network-retry"),
    "transient": StrategyBlock(name="network-retry"),
    "rate_limit": StrategyBlock(name="rate-limit-backoff", attempts=5, initial_delay_ms=5000,
                                factor=3.0, max_delay_ms=RATE_LIMIT_MAX_DELAY_MS,
                                fallbacks=("cache", OTHERS)),
    "server_error": StrategyBlock(name="server-error-circuit", fallbacks=("api", OTHERS)),
    "authentication": StrategyBlock(name="auth-token-refresh", attempts=2, refresh_token=True,
                                    alert=True),
    "client_error": StrategyBlock(name="dead-letter-queue"),
    "response_too_large": StrategyBlock(name="response-size-limit"),
    "unknown": StrategyBlock(name="dead-letter-queue", dead_letter=True),
})


@dataclass(frozen=True)
class StopAfterAttempt:
    """Stop once `attempts` calls have been made (the first one included)."""

    attempts: int

    def __call__(self, attempt: int) -> bool:
        return attempt >= self.attempts


@dataclass(frozen=True)
class WaitExponential:
    """initial * factor ** (attempt - 1), capped; jitter draws it from [d * (1 - j), d].

    Without `rng` the module-level generator is used, which Python reseeds in forked workers,
    so sibling workers do not retry in lockstep.
    """

    initial_ms: float
    factor: float
    max_ms: float
    jitter: float = 0.0

    @classmethod
    def of(cls, retry: RetryConfig) -> WaitExponential:
        return cls(retry.initial_delay_ms, retry.backoff_factor, retry.max_delay_ms,
                   retry.jitter)

    def __call__(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError(f"The attempt number starts at 1, got {attempt}.")
        cap_ms = max(0.0, float(self.max_ms))
        try:
            raw_ms = self.initial_ms * self.factor ** (attempt - 1)
        except OverflowError:
            raw_ms = cap_ms
        delay_ms = min(max(0.0, float(raw_ms)), cap_ms)
        jitter = min(max(self.jitter, 0.0), 1.0)
        if jitter and delay_ms:
            low = delay_ms * (1.0 - jitter)
            delay_ms = rng.uniform(low, delay_ms) if rng is not None else random.uniform(
                low, delay_ms)
        return min(delay_ms, cap_ms) / 1000.0


@dataclass(frozen=True)
class Strategy:
    """A resolved strategy: what the policy and the pipeline do with one failure."""

    name: str
    key: str  # the category or status it was resolved for
    stop: StopAfterAttempt
    wait: WaitExponential
    retry: bool | None = None  # None: the error class decides
    breaker: bool | None = None  # None: the error class decides
    fallbacks: tuple[str, ...] = (OTHERS,)
    alert: bool = False
    refresh_token: bool = False
    dead_letter: bool = False

    def retryable(self, c: Classification) -> bool:
        return c.retryable if self.retry is None else self.retry

    def counts_against_breaker(self, c: Classification) -> bool:
        return c.counts_against_breaker() if self.breaker is None else self.breaker

    def chain(self, integration: Integration) -> tuple[FallbackConfig, ...]:
        """The integration's fallbacks this strategy may use, in the order it uses them."""
        if self.dead_letter:
            return ()
        chosen: list[FallbackConfig] = []
        for kind in self.fallbacks:
            for fallback in integration.fallbacks:  # already in priority order
                if (kind == OTHERS or fallback.type == kind) and fallback not in chosen:
                    chosen.append(fallback)
        return tuple(chosen)


def _block(integration: Integration, key: str, status_key: str | None) -> StrategyBlock:
    block = DEFAULT_TABLE.get(key, StrategyBlock())
    own = integration.strategies
    if key in own:
        block = own[key].over(block)
    if status_key is not None:
        block = own[status_key].over(block)
    return block


def resolve(integration: Integration, key: str, status: int | None = None) -> Strategy:
    """The strategy for failures of category `key` (and HTTP `status`) on `integration`."""
    status_key = str(status) if status is not None and str(status) in integration.strategies \
        else None
    b = _block(integration, str(key), status_key)
    retry = integration.retry
    return Strategy(
        name=b.name or str(key), key=status_key or str(key),
        stop=StopAfterAttempt(retry.max_attempts if b.attempts is None else b.attempts),
        wait=WaitExponential(
            retry.initial_delay_ms if b.initial_delay_ms is None else b.initial_delay_ms,
            retry.backoff_factor if b.factor is None else b.factor,
            retry.max_delay_ms if b.max_delay_ms is None else b.max_delay_ms,
            retry.jitter if b.jitter is None else b.jitter),
        retry=b.retry, breaker=b.breaker,
        fallbacks=(OTHERS,) if b.fallbacks is None else b.fallbacks,
        alert=bool(b.alert), refresh_token=bool(b.refresh_token),
        dead_letter=bool(b.dead_letter))


def strategy_for(integration: Integration, c: Classification) -> Strategy:
    """The strategy for a classified failure (its primary category and its status)."""
    return resolve(integration, str(c.primary), c.status)
