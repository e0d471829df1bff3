"""The gate's decision before a call, written once: `ENTER_STEPS`, in the order they run.

A delivery is admitted when every step lets it go on: the idempotency claim, the retry-budget
charge of a pending retry, a rate-limit slot, a breaker permit, then the first attempt counted
for the retry budget. Each step knows how to run as part of the gate's one script (`plan`,
whose reply its `go_on` test in `lua/chain.lua` reads the way `judge` does) and how to run on
its own, through its component (`run`); both give `judge` the same value. `Gate` walks this
tuple both ways, so the two paths cannot take the steps in different orders.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from recovery.config.registry import Integration
from recovery.core.policy import BlockSource
from recovery.state.breaker import BreakerOpenError, ClusterBreaker, Permit
from recovery.state.budget import RetryBudget, spread_deferral
from recovery.state.idempotency import Claim, ClaimResult, IdempotencyStore
from recovery.state.ratelimit import ClusterRateLimiter
from recovery.state.scripts import ScriptArg, ScriptCall

RATE_LIMITED = "the integration's rate limit is full or paused"
BUDGET_SPENT = "the integration's retry budget has no room for another retry yet"

T = TypeVar("T")
BreakerAnswer = Permit | BreakerOpenError  # a permit, or the refusal acquire would raise


@dataclass(frozen=True)
class Block:
    """Why a delivery may not call now, and for how long (a retry-budget wait is already
    spread, so deferred retries do not all come back at once)."""

    source: BlockSource
    wait_s: float
    why: str


@dataclass(frozen=True)
class Admission:
    """What `enter` decided. Call the upstream only when `claim` is CLAIMED, the delivery count
    is within the poison limit and `block` is None; then `permit` is the breaker's."""

    claim: ClaimResult
    block: Block | None = None
    permit: Permit | None = None


@dataclass(slots=True)
class Entry:
    """One delivery asking to call, and the components that decide for its integration (not
    frozen: it is made for every delivery, and a frozen dataclass costs more to make)."""

    integration: Integration
    key: str
    holder: str
    claim_ttl_ms: int
    delivery: str
    first_attempt: bool
    budget_pending: bool
    max_deliveries: int
    idempotency: IdempotencyStore
    limiter: ClusterRateLimiter
    budget: RetryBudget
    breaker: ClusterBreaker


@dataclass(slots=True)
class Progress:
    """What the steps so far have granted: the claim, then the breaker's permit."""

    claim: ClaimResult | None = None
    permit: Permit | None = None

    def refused(self, block: Block | None = None) -> Admission:
        assert self.claim is not None, "the claim step runs first"
        return Admission(self.claim, block)

    def admitted(self) -> Admission:
        assert self.claim is not None, "the claim step runs first"
        return Admission(self.claim, permit=self.permit)


class Planned(NamedTuple, Generic[T]):
    """A step as part of the one script: its run, and how its reply becomes its value."""

    call: ScriptCall
    read: Callable[[Any], T]


class Known(NamedTuple, Generic[T]):
    """A step whose value is known without Redis (its component is off)."""

    value: T


class Step(ABC, Generic[T]):
    """One decision before the call."""

    name: ClassVar[str]  # its function in the combined script
    go_on: ClassVar[str] = "any"  # the test of its reply in `lua/chain.lua`

    def applies(self, entry: Entry) -> bool:
        """Whether this delivery takes the step at all (on both paths alike)."""
        return True

    def test_arg(self, entry: Entry) -> ScriptArg:
        """The argument of its `go_on` test (the claim's: the poison limit)."""
        return ""

    @abstractmethod
    def plan(self, entry: Entry) -> Planned[T] | Known[T] | None:
        """How to run as part of the script; None when this process must decide it (then it
        and every later step run one by one after the script)."""

    @abstractmethod
    def run(self, entry: Entry) -> T:
        """Run on its own, through the component (which falls back to this process's state)."""

    @abstractmethod
    def judge(self, entry: Entry, value: T, progress: Progress) -> Admission | None:
        """The refusal `value` means, or None to go on (noting a grant in `progress`)."""


class ClaimStep(Step[ClaimResult]):
    """The key claimed and the delivery counted: a key that succeeded already, a key another
    delivery holds, or a message delivered too often goes no further."""

    name = "idempotency_claim"
    go_on = "claimed"

    def test_arg(self, entry: Entry) -> ScriptArg:
        return entry.max_deliveries

    def plan(self, entry: Entry) -> Planned[ClaimResult]:
        return Planned(entry.idempotency.claim_call(entry.integration.id, entry.key,
                                                    entry.holder, entry.claim_ttl_ms,
                                                    entry.delivery),
                       IdempotencyStore.claim_result)

    def run(self, entry: Entry) -> ClaimResult:
        return entry.idempotency.claim(entry.integration.id, entry.key, entry.holder,
                                       entry.claim_ttl_ms, entry.delivery)

    def judge(self, entry: Entry, value: ClaimResult, progress: Progress) -> Admission | None:
        progress.claim = value
        if value.claim is not Claim.CLAIMED or value.deliveries > entry.max_deliveries:
            return progress.refused()
        return None


class RetryChargeStep(Step[float]):
    """A retry the budget has not charged yet (it was deferred for want of room) is charged."""

    name = "retry_budget_charge"
    go_on = "zero"

    def applies(self, entry: Entry) -> bool:
        return entry.budget_pending

    def plan(self, entry: Entry) -> Planned[float] | Known[float]:
        call = entry.budget.charge_call(entry.integration.id, entry.integration.retry_budget)
        return Known(0.0) if call is None else Planned(call, RetryBudget.charge_wait_s)

    def run(self, entry: Entry) -> float:
        return entry.budget.try_charge_retry(entry.integration.id, entry.integration.retry_budget)

    def judge(self, entry: Entry, value: float, progress: Progress) -> Admission | None:
        if value <= 0:
            return None
        return progress.refused(Block("retry-budget", spread_deferral(
            value, entry.integration.retry_budget), BUDGET_SPENT))


class RateLimitStep(Step[float]):
    """A slot of the integration's rate limit, or how long until one is free."""

    name = "rate_limit"
    go_on = "zero"

    def plan(self, entry: Entry) -> Planned[float]:
        return Planned(entry.limiter.acquire_call(entry.integration.id,
                                                  entry.integration.rate_limit),
                       ClusterRateLimiter.wait_s)

    def run(self, entry: Entry) -> float:
        return entry.limiter.acquire(entry.integration.id, entry.integration.rate_limit)

    def judge(self, entry: Entry, value: float, progress: Progress) -> Admission | None:
        return progress.refused(Block("rate-limit", value, RATE_LIMITED)) if value > 0 else None


class BreakerStep(Step[BreakerAnswer]):
    """The breaker's permit (a probe's while half-open), or how long it stays open."""

    name = "breaker_acquire"
    go_on = "granted"

    def plan(self, entry: Entry) -> Planned[BreakerAnswer] | Known[BreakerAnswer] | None:
        breaker = entry.breaker
        acquire = breaker.acquire_call()
        if acquire is not None:
            call, probe_id = acquire
            return Planned(call, lambda reply: _permit(
                lambda: breaker.permit_from(reply, probe_id)))
        # Off: a permit without a token, no Redis involved. On: Redis failed for the breaker a
        # moment ago, and it decides in this process.
        return None if breaker.config.enabled else Known(breaker.acquire())

    def run(self, entry: Entry) -> BreakerAnswer:
        return _permit(entry.breaker.acquire)

    def judge(self, entry: Entry, value: BreakerAnswer, progress: Progress) -> Admission | None:
        if isinstance(value, BreakerOpenError):
            return progress.refused(Block("breaker", value.retry_after_s, str(value)))
        progress.permit = value
        return None


class FirstAttemptStep(Step[None]):
    """A first attempt about to be made counts toward the retries the budget allows."""

    name = "retry_budget_note"

    def applies(self, entry: Entry) -> bool:
        return entry.first_attempt

    def plan(self, entry: Entry) -> Planned[None] | Known[None]:
        call = entry.budget.note_call(entry.integration.id, entry.integration.retry_budget)
        return Known(None) if call is None else Planned(call, _ignore)

    def run(self, entry: Entry) -> None:
        entry.budget.note_first_attempt(entry.integration.id, entry.integration.retry_budget)

    def judge(self, entry: Entry, value: None, progress: Progress) -> Admission | None:
        return None


ENTER_STEPS: tuple[Step[Any], ...] = (ClaimStep(), RetryChargeStep(), RateLimitStep(),
                                      BreakerStep(), FirstAttemptStep())


def _permit(acquire: Callable[[], Permit]) -> BreakerAnswer:
    try:
        return acquire()
    except BreakerOpenError as exc:
        return exc


def _ignore(_reply: Any) -> None:
    return None
