"""The Redis round trips of one delivery, folded into one before the call and one after it.

Before the call, `Gate.enter` claims the idempotency key (counting the delivery), takes a
rate-limit slot, gets a breaker permit and counts a first attempt for the retry budget, in one
atomic script that stops at the first refusal, where the separate calls would have stopped.
After the call, `Gate.settle` records the breaker outcome and releases the claim in one script.
Each step runs its component's own script unchanged (`recovery.state.scripts`).

A retry waiting for the retry budget, a process without Redis, or Redis failing: the
components are called one by one, as before, and each falls back to its in-process state the
way it always has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from recovery.config.registry import Integration
from recovery.core.policy import BlockSource
from recovery.state import lua
from recovery.state.breaker import BreakerOpenError, ClusterBreaker, Permit
from recovery.state.budget import RetryBudget, spread_deferral
from recovery.state.connection import is_cluster
from recovery.state.idempotency import Claim, ClaimResult, IdempotencyStore
from recovery.state.ratelimit import ClusterRateLimiter, RedisOutage
from recovery.state.scripts import ScriptArg, ScriptCache, ScriptCall, combine

RATE_LIMITED = "the integration's rate limit is full or paused"
BUDGET_SPENT = "the integration's retry budget has no room for another retry yet"





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


class Gate:
    """The pre- and post-call decisions of one process's jobs, against the components."""

    def __init__(self, client: redis.Redis | None, idempotency: IdempotencyStore,
                 limiter: ClusterRateLimiter, budget: RetryBudget,
                 breaker_for: Callable[[Integration], ClusterBreaker]) -> None:
        self._scripts = ScriptCache(client) if client is not None else None
        # The audit spool is one stream for every integration: on a Redis Cluster it lives in
        # another slot than an integration's keys, so it is appended on its own there.
        self._fold_audit = not is_cluster(client)
        self._outage = RedisOutage("gate")
        self._idempotency = idempotency
        self._limiter = limiter
        self._budget = budget
        self._breaker_for = breaker_for

    def enter(self, integration: Integration, key: str, holder: str, claim_ttl_ms: int,
              delivery: str, *, first_attempt: bool, budget_pending: bool,
              max_deliveries: int) -> Admission:
        """Claim, rate limit, breaker permit, budget: one round trip, or one call each when a
        retry still has to be charged to the retry budget or Redis is not shared."""

        def one_by_one() -> Admission:
            return self._enter_one_by_one(integration, key, holder, claim_ttl_ms, delivery,
                                          first_attempt, budget_pending, max_deliveries)

        if budget_pending or not self._combinable():
            return one_by_one()
        return self._outage.run(
            lambda: self._enter_combined(integration, key, holder, claim_ttl_ms, delivery,
                                         first_attempt, max_deliveries),
            one_by_one)

    def settle(self, integration: Integration, permit: Permit | None, key: str, holder: str,
               job_id: str, *, success: bool, counts: bool,
               audit: ScriptCall | None = None) -> bool:
        """Record the call's outcome with the breaker and release the claim (remembering the
        key when `success`) in one round trip, which also runs `audit` (a spool append,
        `AuditBatcher.take_for_spool`) when given. Returns whether `audit` ran."""
        breaker = self._breaker_for(integration)

        def one_by_one() -> bool:
            if permit is not None:
                breaker.record(permit, success=success, counts=counts)
            self._idempotency.release(integration.id, key, holder, job_id, succeeded=success)
            return False

        if not self._combinable():
            return one_by_one()
        record = None if permit is None else breaker.record_call(permit, success=success,
                                                                 counts=counts)
        if record is None and permit is not None:
            breaker.record(permit, success=success, counts=counts)  # breaker off, or local
        steps: dict[str, ScriptCall] = {} if record is None else {"breaker_record": record}
        steps["idempotency_release"] = self._idempotency.release_call(
            integration.id, key, holder, job_id, succeeded=success)
        if audit is not None and not self._fold_audit:
            audit = None
        if audit is not None:
            steps["audit_spool"] = audit
        header: list[ScriptArg] = ["1" if record is not None else "0",
                                   "1" if audit is not None else "0"]

        def combined() -> bool:
            reply = self._run("settle", lua.load("gate_settle"), steps, header)
            if record is not None:
                breaker.recorded(reply[0])
            if audit is not None and audit.on_reply is not None:
                audit.on_reply(reply[1])
            return audit is not None

        return self._outage.run(combined, one_by_one)

    def close(self) -> None:
        """Close the connections the combined scripts run on."""
        if self._scripts is not None:
            self._scripts.close()

    def _combinable(self) -> bool:
        return self._scripts is not None and self._idempotency.shared and self._limiter.shared

    def _enter_combined(self, integration: Integration, key: str, holder: str,
                        claim_ttl_ms: int, delivery: str, first_attempt: bool,
                        max_deliveries: int) -> Admission:
        breaker = self._breaker_for(integration)
        acquire = breaker.acquire_call()
        # None with the breaker on: Redis failed for it a moment ago and it decides in this
        # process, after the script; the first attempt is counted only once it is granted.
        decides_here = acquire is None and breaker.config.enabled
        note = self._budget.note_call(integration.id, integration.retry_budget) if (
            first_attempt and not decides_here) else None
        steps: dict[str, ScriptCall] = {
            "idempotency_claim": self._idempotency.claim_call(integration.id, key, holder,
                                                              claim_ttl_ms, delivery),
            "rate_limit": self._limiter.acquire_call(integration.id, integration.rate_limit),
        }
        if acquire is not None:
            steps["breaker_acquire"] = acquire[0]
        if note is not None:
            steps["retry_budget"] = note
        header: list[ScriptArg] = [max_deliveries, "1" if acquire else "0", "1" if note else "0"]
        reply = self._run("enter", lua.load("gate_enter"), steps, header)
        claim = self._idempotency.claim_result(reply[0])
        if len(reply) == 1:
            return Admission(claim)
        wait_s = self._limiter.wait_s(reply[1])
        if wait_s > 0:
            return Admission(claim, Block("rate-limit", wait_s, RATE_LIMITED))
        try:
            permit = (breaker.permit_from(reply[2], acquire[1]) if acquire is not None
                      else breaker.acquire())
        except BreakerOpenError as exc:
            return Admission(claim, Block("breaker", exc.retry_after_s, str(exc)))
        if decides_here and first_attempt:
            self._budget.note_first_attempt(integration.id, integration.retry_budget)
        return Admission(claim, permit=permit)

    def _enter_one_by_one(self, integration: Integration, key: str, holder: str,
                          claim_ttl_ms: int, delivery: str, first_attempt: bool,
                          budget_pending: bool, max_deliveries: int) -> Admission:
        claim = self._idempotency.claim(integration.id, key, holder, claim_ttl_ms, delivery)
        if claim.claim is not Claim.CLAIMED or claim.deliveries > max_deliveries:
            return Admission(claim)
        if budget_pending:
            wait_s = self._budget.try_charge_retry(integration.id, integration.retry_budget)
            if wait_s > 0:
                return Admission(claim, Block("retry-budget", spread_deferral(
                    wait_s, integration.retry_budget), BUDGET_SPENT))
        wait_s = self._limiter.acquire(integration.id, integration.rate_limit)
        if wait_s > 0:
            return Admission(claim, Block("rate-limit", wait_s, RATE_LIMITED))
        try:
            permit = self._breaker_for(integration).acquire()
        except BreakerOpenError as exc:
            return Admission(claim, Block("breaker", exc.retry_after_s, str(exc)))
        if first_attempt:
            self._budget.note_first_attempt(integration.id, integration.retry_budget)
        return Admission(claim, permit=permit)

    def _run(self, name: str, driver: str, steps: dict[str, ScriptCall],
             header: list[ScriptArg]) -> Any:
        """Run `steps` (in the order the driver takes them) as one script."""
        assert self._scripts is not None
        calls = list(steps.values())
        counts = [n for call in calls for n in (len(call.keys), len(call.args))]
        keys = [k for call in calls for k in call.keys]
        args = [*header, *counts, *(a for call in calls for a in call.args)]
        take = lua.render("gate_take", first_count=len(header) + 1,
                          first_arg=len(header) + len(counts) + 1)
        return self._scripts.run(f"{name}:{','.join(steps)}",
                                 lambda: combine({n: c.source for n, c in steps.items()},
                                                 take + driver),
                                 keys, args)
