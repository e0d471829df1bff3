"""The retry policy: what a job does next after a failure or while it is blocked.

Pure functions of (classification, attempt, integration, limits). They never sleep, never
touch Redis and never look at the clock, so every decision can be tested as a table (the only
side effect is the log line `cap_retry_after` writes when it cuts a server's wish short).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import structlog

from recovery.core.errors import UNREPAIRABLE_CATEGORIES, Classification
from recovery.core.strategies import Strategy, WaitExponential, strategy_for

if TYPE_CHECKING:
    from recovery.config.registry import Integration, RetryConfig

#: What follows an attempt, as its audit row records it (`attempts.decision`).
Action = Literal["retry", "defer", "fallback", "dead_letter", "fail"]
#: How a job ends when nothing serves it, as its status says it (`jobs.status`).
FinalStatus = Literal["dead", "failed"]
DelaySource = Literal["backoff", "retry-after", "retry-after-cap", "breaker", "rate-limit",
                      "retry-budget", "idempotency-busy"]
#: What holds a job back before its call. `idempotency-busy`: another delivery of the same
#: idempotency key is running (16 characters, the width of the attempts' `delay_source`).
BlockSource = Literal["breaker", "rate-limit", "retry-budget", "idempotency-busy"]

log = structlog.get_logger(__name__)

DEAD_LETTER_STRATEGY = "dead-letter-queue"
_BLOCK_STRATEGY: dict[str, str] = {
    "breaker": "server-error-circuit",
    "rate-limit": "rate-limit-backoff",
    "retry-budget": "retry-budget",
    "idempotency-busy": "idempotency-wait",
}
_BLOCK_WHAT: dict[str, str] = {
    "breaker": "The circuit breaker is open",
    "rate-limit": "The rate limit is exhausted",
    "retry-budget": "The integration's retry budget is spent",
    "idempotency-busy": "Another delivery of the same idempotency key is running",
}


@dataclass(frozen=True)
class Decision:
    """The next step for a job. `delay_s` is set for retry and defer only."""

    action: Action
    delay_s: float | None
    delay_source: DelaySource | None
    strategy: str
    reason: str
    #: The job's final status if this decision ends it: set for `dead_letter` and `fail`,
    #: and for `fallback` (the status should the fallbacks serve nothing).
    final: FinalStatus | None = None


def backoff_delay(retry: RetryConfig, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based) under a retry block.

    The delay is initial_delay * backoff_factor ** (attempt - 1), capped at max_delay; jitter
    then draws it uniformly from [delay * (1 - jitter), delay], so it never exceeds the cap
    (`recovery.core.strategies.WaitExponential`).
    """
    return WaitExponential.of(retry)(attempt, rng)


def cap_retry_after(c: Classification, cap_s: float, integration_id: str) -> Classification:
    """`c` with its Retry-After cut to `cap_s` seconds when the server asked for longer.

    A Retry-After pauses the whole integration for every worker, so one answer such as
    `Retry-After: 3153600000` would stop it for a century. The cut is logged, and the returned
    classification remembers what the server asked for (`retry_after_requested_s`), so the
    attempt row records the delay source as `retry-after-cap` (16 characters: the column's
    width).
    """
    if cap_s < 0:
        raise ValueError(f"The Retry-After cap must not be negative, got {cap_s}.")
    if c.retry_after_s is None or c.retry_after_s <= cap_s:
        return c
    log.warning("retry_after_capped", integration=integration_id,
                requested_s=c.retry_after_s, cap_s=cap_s,
                detail="The server asked for a longer pause than RETRY_AFTER_MAX allows; "
                       "the integration pauses for the cap instead.")
    return replace(c, retry_after_s=cap_s, retry_after_requested_s=c.retry_after_s)


def decide_after_failure(
    c: Classification,
    attempt: int,
    integration: Integration,
    *,
    max_countdown_s: float,
    has_fallback: bool,
    dlq_enabled: bool,
    rng: random.Random | None = None,
    strategy: Strategy | None = None,
) -> Decision:
    """Decide what follows failed attempt number `attempt` (1-based) of a call.

    The failure's recovery `strategy` (by default resolved from the integration's strategy
    table, `recovery.core.strategies`) gives the attempts, the delays, whether to retry at
    all and whether the job goes straight to the dead-letter queue; `has_fallback` says
    whether that strategy has a fallback to use.

    Retryable failures with attempts left are retried after the backoff delay, or after the
    server's Retry-After when that is longer. Every delay is capped at `max_countdown_s` (the
    broker's visibility timeout leaves no room for longer countdowns); when Retry-After is cut
    short that way, the shared rate-limit gate still holds the next attempt back until the
    server's time, deferring instead of spending an attempt. Anything else gives up: see
    `_end_without_retry` in the pipeline.
    """
    if attempt < 1:
        raise ValueError(f"The attempt number starts at 1, got {attempt}.")
    if max_countdown_s < 0:
        raise ValueError(f"max_countdown_s must not be negative, got {max_countdown_s}.")
    chosen = strategy if strategy is not None else strategy_for(integration, c)
    c = replace(c, strategy=chosen.name)
    where = f"{c.message} on attempt {attempt} of {chosen.stop.attempts}"
    if chosen.dead_letter:
        return _park_or_fail(chosen.name, f"{where} is not retried (the {chosen.name} "
                             "strategy)", dlq_enabled)
    if not chosen.retryable(c):
        reason = f"{where} is not retryable ({c.primary})"
        return _give_up(c, reason, has_fallback, dlq_enabled)
    if chosen.stop(attempt):
        return _give_up(c, f"{where}; no attempts are left", has_fallback, dlq_enabled)
    delay = chosen.wait(attempt, rng)
    source: DelaySource = "backoff"
    if c.retry_after_s is not None:
        delay = max(delay, c.retry_after_s)
        source = "retry-after" if c.retry_after_requested_s is None else "retry-after-cap"
    delay = min(delay, max_countdown_s)
    return Decision(
        action="retry",
        delay_s=delay,
        delay_source=source,
        strategy=c.strategy,
        reason=f"{where}; retrying in {delay:.1f} s.",
    )


def decide_when_blocked(
    until_s: float,
    blocked_since_s: float,
    *,
    max_defer_s: float,
    source: BlockSource,
    has_fallback: bool,
    dlq_enabled: bool,
) -> Decision:
    """Decide what a job does when the breaker is open, the rate limit is full or the retry
    budget is spent.

    `until_s` is how long the block lasts from now; `blocked_since_s` how long this job has
    already spent deferred in total. While the whole wait fits in `max_defer_s` the job is
    deferred without spending an attempt; beyond it, the job gives up like an exhausted retry.
    """
    until = max(0.0, until_s)
    total = max(0.0, blocked_since_s) + until
    what = _BLOCK_WHAT[source]
    strategy = _BLOCK_STRATEGY[source]
    if total <= max_defer_s:
        return Decision(
            action="defer",
            delay_s=until,
            delay_source=source,
            strategy=strategy,
            reason=(
                f"{what} for another {until:.1f} s; deferring without spending an attempt "
                f"({total:.1f} s of the {max_defer_s:.1f} s defer window)."
            ),
        )
    reason = (
        f"{what} for another {until:.1f} s, which would keep the job waiting {total:.1f} s, "
        f"beyond the {max_defer_s:.1f} s defer window"
    )
    if has_fallback:
        return Decision("fallback", None, None, strategy, f"{reason}; using the fallbacks.",
                        end_status(dlq_enabled))
    return _park_or_fail(strategy, reason, dlq_enabled)


def _give_up(c: Classification, reason: str, has_fallback: bool, dlq_enabled: bool) -> Decision:
    """Fall back, dead-letter or fail a call that will not be retried.

    A client error (a 4xx other than authentication, rate limiting and the transient ones)
    skips the fallbacks: the request itself is wrong, and a secondary API, a cached answer or
    a default value would hide the caller's mistake instead of reporting it. An answer over
    the integration's `max_response_bytes` skips them too: the limit is the operator's to
    raise, and a stand-in answer would hide that the real one was refused. Both are
    dead-lettered so that they can be fixed and replayed.
    """
    unrepairable = c.categories & UNREPAIRABLE_CATEGORIES
    if has_fallback and not unrepairable:
        return Decision("fallback", None, None, c.strategy, f"{reason}; using the fallbacks.",
                        end_status(dlq_enabled))
    if has_fallback:
        what = min(unrepairable, key=lambda category: category.value)
        reason = f"{reason}; fallbacks cannot repair a {what.value.replace('_', ' ')}"
    return _park_or_fail(c.strategy, reason, dlq_enabled)


def end_status(dlq_enabled: bool) -> FinalStatus:
    """How a job ends when nothing serves it: parked in the dead-letter queue (`dead`) or,
    with the queue disabled, `failed`. The one place that decides it (the pipeline, a
    poison message and an unexpected exception all ask here)."""
    return "dead" if dlq_enabled else "failed"


def _park_or_fail(strategy: str, reason: str, dlq_enabled: bool) -> Decision:
    """The decision that ends a job; its audit word (`dead_letter`, `fail`) and its status
    word (`dead`, `failed`) are paired here and nowhere else."""
    if end_status(dlq_enabled) == "dead":
        return Decision(
            "dead_letter", None, None, DEAD_LETTER_STRATEGY,
            f"{reason}; moving the job to the dead-letter queue.", "dead",
        )
    return Decision(
        "fail", None, None, strategy,
        f"{reason}; the dead-letter queue is disabled, so the job fails.", "failed",
    )
