"""The Redis round trips of one delivery, folded into one before the call and one after it.

Before the call, `Gate.enter` takes the steps of `gate_steps.ENTER_STEPS` (claim the
idempotency key, charge a pending retry to the retry budget, take a rate-limit slot, get a
breaker permit, count a first attempt) in one atomic script that stops at the first refusal,
where the separate calls would have stopped. After the call, `Gate.settle` records the breaker
outcome and releases the claim in one script. Each step runs its component's own script
unchanged (`recovery.state.scripts.run_chain`).

A process without Redis, or Redis failing: the same steps are called one by one, and each
component falls back to its in-process state the way it always has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import redis

from recovery.config.registry import Integration
from recovery.engine.gate_steps import (
    ENTER_STEPS,
    Admission,
    Entry,
    Known,
    Planned,
    Progress,
    Step,
)
from recovery.state.breaker import ClusterBreaker, Permit
from recovery.state.budget import RetryBudget
from recovery.state.connection import is_cluster
from recovery.state.idempotency import IdempotencyStore
from recovery.state.ratelimit import ClusterRateLimiter, RedisOutage
from recovery.state.scripts import Link, ScriptCache, ScriptCall, run_chain


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
        """Claim, retry charge, rate limit, breaker permit, first attempt: one round trip, or
        one call each when Redis is not shared."""
        entry = Entry(integration, key, holder, claim_ttl_ms, delivery, first_attempt,
                      budget_pending, max_deliveries, self._idempotency, self._limiter,
                      self._budget, self._breaker_for(integration))
        steps = [step for step in ENTER_STEPS if step.applies(entry)]
        if not self._combinable():
            return _one_by_one(entry, steps, Progress())
        return self._outage.run(lambda: self._enter_combined(entry, steps),
                                lambda: _one_by_one(entry, steps, Progress()))

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
        links = [] if record is None else [
            Link("breaker_record", replace(record, on_reply=breaker.recorded))]
        links.append(Link("idempotency_release", self._idempotency.release_call(
            integration.id, key, holder, job_id, succeeded=success)))
        spools = False
        if audit is not None and self._fold_audit:
            links.append(Link("audit_spool", audit))
            spools = True

        def combined() -> bool:
            assert self._scripts is not None
            for link, reply in zip(links, run_chain(self._scripts, "settle", links),
                                   strict=True):
                if link.call.on_reply is not None:
                    link.call.on_reply(reply)
            return spools

        return self._outage.run(combined, one_by_one)

    def close(self) -> None:
        """Close the connections the combined scripts run on."""
        if self._scripts is not None:
            self._scripts.close()

    def _combinable(self) -> bool:
        return self._scripts is not None and self._idempotency.shared and self._limiter.shared

    def _enter_combined(self, entry: Entry, steps: Sequence[Step[Any]]) -> Admission:
        """The steps up to the first one this process must decide run in one script; their
        replies are judged in order, then the steps left run one by one."""
        plans: list[tuple[Step[Any], Planned[Any] | Known[Any]]] = []
        links: list[Link] = []
        for step in steps:
            plan = step.plan(entry)
            if plan is None:
                break
            plans.append((step, plan))
            if isinstance(plan, Planned):
                links.append(Link(step.name, plan.call, step.go_on, step.test_arg(entry)))
        assert self._scripts is not None
        replies = iter(run_chain(self._scripts, "enter", links))
        progress = Progress()
        for step, plan in plans:
            if isinstance(plan, Known):
                value = plan.value
            else:
                reply = next(replies, _STOPPED)
                if reply is _STOPPED:
                    raise RuntimeError(f"the gate's script stopped before {step.name}, but the "
                                       "gate found no refusal in the replies before it")
                value = plan.read(reply)
            refusal = step.judge(entry, value, progress)
            if refusal is not None:
                return refusal
        return _one_by_one(entry, steps[len(plans):], progress)


_STOPPED = object()


def _one_by_one(entry: Entry, steps: Sequence[Step[Any]], progress: Progress) -> Admission:
    """Each step through its component, in order, up to the first refusal."""
    for step in steps:
        refusal = step.judge(entry, step.run(entry), progress)
        if refusal is not None:
            return refusal
    return progress.admitted()
