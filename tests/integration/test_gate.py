"""The folded gate against real Redis: one round trip before the call and one after it, and the
same decisions, in every case, as the components called one by one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import redis

from recovery.config.budget import RetryBudgetConfig
from recovery.config.registry import BreakerConfig, Integration, RateLimitConfig, RetryConfig
from recovery.engine.gate import Gate
from recovery.engine.gate_steps import ENTER_STEPS, Admission
from recovery.state.breaker import ClusterBreaker
from recovery.state.budget import RetryBudget
from recovery.state.connection import redis_client
from recovery.state.idempotency import Claim, IdempotencyStore
from recovery.state.ratelimit import ClusterRateLimiter

Transitions = list[tuple[str, str, str]]


def counting_client(url: str, name: str) -> tuple[redis.Redis, list[str]]:
    """A client named `name` whose connections record every command sent over them (EVALSHA,
    SCRIPT LOAD...): the client's own and those of the connections the gate makes like them."""
    sent: list[str] = []

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            first = command[0] if isinstance(command, list) else command
            sent.append(bytes(first).split(b"\r\n")[2].decode())  # *<n> $<len> NAME ...
            super().send_packed_command(command, check_health)

    return redis.Redis.from_url(url, connection_class=CountingConnection,
                                client_name=name), sent


def make_integration(*, max_requests: int = 100, threshold: int = 3,
                     half_open_max_calls: int = 1) -> Integration:
    return Integration(
        id="shop", name="Shop", base_url="http://127.0.0.1:9/v1", timeout_ms=2000,
        retry=RetryConfig(max_attempts=3, initial_delay_ms=100, backoff_factor=2,
                          max_delay_ms=1000, jitter=0.0),
        circuit_breaker=BreakerConfig(enabled=True, threshold=threshold, reset_timeout_ms=60_000,
                                      call_timeout_ms=2000,
                                      half_open_max_calls=half_open_max_calls,
                                      reset_backoff_factor=1.0),
        fallbacks=(), health_check=None,
        rate_limit=RateLimitConfig(window_ms=60_000, max_requests=max_requests),
        headers={}, oauth=None)


@dataclass
class Rig:
    """A gate over real components under one key prefix; `combined=False` calls them one by
    one (the path taken without a shared Redis for the gate itself)."""

    client: redis.Redis
    sent: list[str]
    prefix: str
    idempotency: IdempotencyStore
    limiter: ClusterRateLimiter
    budget: RetryBudget
    breakers: dict[str, ClusterBreaker]
    transitions: Transitions
    gate: Gate

    def breaker(self, integration: Integration) -> ClusterBreaker:
        return self.breakers[integration.id]

    def enter(self, integration: Integration, key: str = "k1", holder: str = "job-1",
              delivery: str = "job-1:0:1:0", *, first: bool = True, pending: bool = False,
              max_deliveries: int = 3) -> Admission:
        return self.gate.enter(integration, key, holder, 10_000, delivery, first_attempt=first,
                               budget_pending=pending, max_deliveries=max_deliveries)

    def rate_used(self, integration: Integration) -> int:
        return self.limiter.usage(integration.id, integration.rate_limit)["used"]

    def first_attempts(self, integration: Integration) -> int:
        return self.budget.usage(integration.id, integration.retry_budget)["first_attempts"]

    def retries(self, integration: Integration) -> int:
        return self.budget.usage(integration.id, integration.retry_budget)["retries"]


@pytest.fixture
def rig_for(client: redis.Redis) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(integration: Integration, *, combined: bool = True) -> Rig:
        prefix = f"test:gate:{len(made)}:{os.getpid()}:{id(made)}:"
        counting, sent = counting_client(os.environ["REDIS_URL"], prefix.replace(":", "-"))
        transitions: Transitions = []
        breakers = {integration.id: ClusterBreaker(
            counting, integration.id, integration.circuit_breaker, key_prefix=prefix,
            listeners=[lambda _i, old, new, why, _at: transitions.append((old, new, why))])}
        idempotency = IdempotencyStore(counting, key_prefix=prefix)
        limiter = ClusterRateLimiter(counting, key_prefix=prefix)
        budget = RetryBudget(counting, key_prefix=prefix)
        gate = Gate(counting if combined else None, idempotency, limiter, budget,
                    lambda i: breakers[i.id])
        rig = Rig(counting, sent, prefix, idempotency, limiter, budget, breakers, transitions,
                  gate)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        keys = list(client.scan_iter(match=f"{rig.prefix}*"))
        if keys:
            client.delete(*keys)
        rig.gate.close()
        rig.client.close()


def test_a_granted_delivery_costs_one_round_trip_before_and_one_after(
        rig_for: Callable[..., Rig]) -> None:
    shop = make_integration()
    rig = rig_for(shop)
    warm = rig.enter(shop, key="warm", holder="job-0", delivery="job-0:0:1:0")
    assert warm.permit is not None
    rig.gate.settle(shop, warm.permit, "warm", "job-0", "job-0", success=True, counts=True)
    rig.sent.clear()

    passage = rig.enter(shop)
    assert rig.sent == ["EVALSHA"]
    assert passage.claim.claim is Claim.CLAIMED and passage.block is None
    assert passage.permit is not None and passage.permit.token is not None
    rig.gate.settle(shop, passage.permit, "k1", "job-1", "job-1", success=True, counts=True)
    assert rig.sent == ["EVALSHA", "EVALSHA"]

    assert rig.rate_used(shop) == 2
    assert rig.first_attempts(shop) == 2
    again = rig.enter(shop, holder="job-2", delivery="job-2:0:1:0")
    assert again.claim.claim is Claim.SUCCEEDED  # the settle remembered the key
    assert rig.rate_used(shop) == 2 and rig.first_attempts(shop) == 2


def _scenario_duplicate(rig: Rig, shop: Integration) -> Admission:
    rig.idempotency.release(shop.id, "k1", "job-0", "job-0", succeeded=True)
    return rig.enter(shop)


def _scenario_legacy_duplicate(rig: Rig, shop: Integration) -> Admission:
    """A success recorded before keys were scoped per integration still counts."""
    rig.client.set(rig.idempotency.legacy_success_key("k1"), "job-0", ex=60)
    return rig.enter(shop)


def _scenario_other_integration(rig: Rig, shop: Integration) -> Admission:
    """A success of the same key on another integration does not."""
    rig.idempotency.release("another", "k1", "job-0", "job-0", succeeded=True)
    return rig.enter(shop)


def _scenario_busy(rig: Rig, shop: Integration) -> Admission:
    rig.idempotency.claim(shop.id, "k1", "job-0", 10_000, "job-0:0:1:0")
    return rig.enter(shop)


def _scenario_poison(rig: Rig, shop: Integration) -> Admission:
    for _ in range(3):
        rig.idempotency.claim(shop.id, "k1", "job-1", 10_000, "job-1:0:1:0")
    return rig.enter(shop)


def _scenario_rate_limited(rig: Rig, shop: Integration) -> Admission:
    rig.limiter.acquire(shop.id, shop.rate_limit)
    return rig.enter(shop)


def _scenario_breaker_open(rig: Rig, shop: Integration) -> Admission:
    rig.breaker(shop).force_open("test", duration_s=30)
    return rig.enter(shop)


def _scenario_probe_taken(rig: Rig, shop: Integration) -> Admission:
    breaker = rig.breaker(shop)
    breaker.force_open("test", duration_s=0)
    first = rig.enter(shop, key="other", holder="job-0", delivery="job-0:0:1:0")
    assert first.permit is not None and first.permit.probe
    return rig.enter(shop)


def _scenario_retry(rig: Rig, shop: Integration) -> Admission:
    return rig.enter(shop, first=False)


SCENARIOS = {
    "duplicate": (_scenario_duplicate, make_integration()),
    "legacy-duplicate": (_scenario_legacy_duplicate, make_integration()),
    "other-integration": (_scenario_other_integration, make_integration()),
    "busy": (_scenario_busy, make_integration()),
    "poison": (_scenario_poison, make_integration()),
    "rate-limited": (_scenario_rate_limited, make_integration(max_requests=1)),
    "breaker-open": (_scenario_breaker_open, make_integration()),
    "probe-taken": (_scenario_probe_taken, make_integration()),
    "retry": (_scenario_retry, make_integration()),
}


def _outcome(rig: Rig, shop: Integration, passage: Admission) -> dict[str, Any]:
    block = passage.block
    return {
        "claim": (passage.claim.claim, passage.claim.deliveries),
        "block": None if block is None else (block.source, block.wait_s > 0, block.why[:30]),
        "permit": None if passage.permit is None else passage.permit.probe,
        "rate used": rig.rate_used(shop),
        "first attempts": rig.first_attempts(shop),
        "breaker": rig.breaker(shop).snapshot().state,
    }


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_combined_gate_decides_as_the_components_one_by_one(
        name: str, rig_for: Callable[..., Rig]) -> None:
    scenario, shop = SCENARIOS[name]
    outcomes = []
    for combined in (True, False):
        rig = rig_for(shop, combined=combined)
        outcomes.append(_outcome(rig, shop, scenario(rig, shop)))
    assert outcomes[0] == outcomes[1]
    expected_block = {"rate-limited": "rate-limit", "breaker-open": "breaker",
                      "probe-taken": "breaker"}.get(name)
    block = outcomes[0]["block"]
    assert (block[0] if block else None) == expected_block
    if name in ("duplicate", "legacy-duplicate", "busy", "poison"):
        assert outcomes[0]["rate used"] == 0 and outcomes[0]["first attempts"] == 0
    expected_claim = {"duplicate": Claim.SUCCEEDED, "legacy-duplicate": Claim.SUCCEEDED,
                      "busy": Claim.BUSY}.get(name, Claim.CLAIMED)
    assert outcomes[0]["claim"][0] is expected_claim


NO_RETRIES = RetryBudgetConfig(ratio=0.0, floor=0)


def _refused_by(step: str, rig: Rig, shop: Integration) -> Admission:
    """A delivery that passes through every step (a budget charge pending, a first attempt to
    count: the two never come together in a real job, but each adds its step), refused by
    `step`."""
    if step == "idempotency_claim":
        rig.idempotency.claim(shop.id, "k1", "job-0", 10_000, "job-0:0:1:0")
    elif step == "rate_limit":
        rig.limiter.acquire(shop.id, shop.rate_limit)
    elif step == "breaker_acquire":
        rig.breaker(shop).force_open("test", duration_s=30)
    return rig.enter(shop, pending=True)


REFUSALS: dict[str, tuple[Integration, str | None, Claim]] = {
    "idempotency_claim": (make_integration(), None, Claim.BUSY),
    "retry_budget_charge": (replace(make_integration(), retry_budget=NO_RETRIES),
                            "retry-budget", Claim.CLAIMED),
    "rate_limit": (make_integration(max_requests=1), "rate-limit", Claim.CLAIMED),
    "breaker_acquire": (make_integration(), "breaker", Claim.CLAIMED),
}


@pytest.mark.parametrize("step", [step.name for step in ENTER_STEPS if step.go_on != "any"])
def test_whichever_step_refuses_both_paths_stop_there_alike(
        step: str, rig_for: Callable[..., Rig]) -> None:
    """Every step that can refuse (a new one needs a case in REFUSALS): the script's test of
    its reply and the gate's reading of it agree, and nothing after it ran on either path."""
    shop, source, claim = REFUSALS[step]
    outcomes = []
    for combined in (True, False):
        rig = rig_for(shop, combined=combined)
        passage = _refused_by(step, rig, shop)
        block = passage.block
        outcomes.append({
            "claim": passage.claim.claim,
            "block": None if block is None else (block.source, block.why, block.wait_s > 0),
            "permit": passage.permit,
            "rate used": rig.rate_used(shop),
            "retries": rig.retries(shop),
            "first attempts": rig.first_attempts(shop),
            "probes": rig.breaker(shop).snapshot().probes_in_flight,
        })
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["claim"] is claim and outcomes[0]["permit"] is None
    assert (outcomes[0]["block"] or (None,))[0] == source
    order = [s.name for s in ENTER_STEPS]
    ran_after = {"rate used": "rate_limit", "retries": "retry_budget_charge"}
    for counter, counting_step in ran_after.items():
        if order.index(counting_step) > order.index(step):
            assert outcomes[0][counter] == 0, f"{counting_step} ran after {step} refused"
    assert outcomes[0]["first attempts"] == 0  # counted only once every step granted


def test_a_pending_retry_is_charged_in_the_one_round_trip(rig_for: Callable[..., Rig]) -> None:
    shop = make_integration()
    for combined in (True, False):
        rig = rig_for(shop, combined=combined)
        rig.enter(shop, key="warm", holder="job-0", delivery="job-0:0:1:0", first=False,
                  pending=True)  # loads the script
        rig.sent.clear()
        passage = rig.enter(shop, first=False, pending=True)
        assert (rig.sent == ["EVALSHA"]) is combined
        assert passage.permit is not None and passage.block is None
        assert rig.retries(shop) == 2


def test_failures_recorded_by_settle_open_the_breaker_once(rig_for: Callable[..., Rig]) -> None:
    shop = make_integration(threshold=3)
    rig = rig_for(shop)
    for n in range(4):
        passage = rig.enter(shop, key=f"k{n}", holder=f"job-{n}", delivery=f"job-{n}:0:1:0")
        if n < 3:
            assert passage.permit is not None
            rig.gate.settle(shop, passage.permit, f"k{n}", f"job-{n}", f"job-{n}",
                            success=False, counts=True)
        else:
            assert passage.block is not None and passage.block.source == "breaker"
    assert rig.transitions == [("closed", "open", "consecutive_failures=3")]
    retried = rig.enter(shop, key="k0", holder="job-0", delivery="job-0:0:2:0", first=False)
    assert retried.claim.claim is Claim.CLAIMED  # a failed call's claim was released


def test_a_neutral_outcome_releases_the_probe_without_closing(
        rig_for: Callable[..., Rig]) -> None:
    shop = make_integration()
    rig = rig_for(shop)
    rig.breaker(shop).force_open("test", duration_s=0)
    probe = rig.enter(shop)
    assert probe.permit is not None and probe.permit.probe
    rig.gate.settle(shop, probe.permit, "k1", "job-1", "job-1", success=False, counts=False)
    assert rig.breaker(shop).snapshot().state == "half_open"
    assert rig.breaker(shop).snapshot().probes_in_flight == 0


def test_scripts_come_back_after_redis_forgets_them(rig_for: Callable[..., Rig],
                                                    client: redis.Redis) -> None:
    shop = make_integration()
    rig = rig_for(shop)
    assert rig.enter(shop, key="a", holder="job-a", delivery="job-a:0:1:0").permit is not None
    client.script_flush()
    passage = rig.enter(shop)
    assert passage.permit is not None
    rig.gate.settle(shop, passage.permit, "k1", "job-1", "job-1", success=True, counts=True)
    assert rig.enter(shop, holder="job-2", delivery="job-2:0:1:0").claim.claim is Claim.SUCCEEDED


def test_a_connection_redis_dropped_is_replaced_without_leaving_the_combined_path(
        rig_for: Callable[..., Rig], client: redis.Redis) -> None:
    shop = make_integration()
    rig = rig_for(shop)
    warm = rig.enter(shop, key="a", holder="job-a", delivery="job-a:0:1:0")
    rig.gate.settle(shop, warm.permit, "a", "job-a", "job-a", success=True, counts=True)
    name = rig.client.client_getname()
    killed = [c["id"] for c in client.client_list() if c["name"] == name]
    assert len(killed) == 2  # the client's pooled connection and the gate's own
    for client_id in killed:
        client.client_kill_filter(_id=client_id)

    passage = rig.enter(shop)
    assert passage.claim.claim is Claim.CLAIMED and passage.permit is not None
    assert rig.rate_used(shop) == 2  # the script ran once, on the new connection
    rig.sent.clear()
    again = rig.enter(shop, key="k2", holder="job-2", delivery="job-2:0:1:0")
    assert again.permit is not None
    assert rig.sent == ["EVALSHA"]  # still one round trip: the gate never thought Redis down


def test_without_redis_every_decision_is_made_in_this_process() -> None:
    shop = make_integration()
    dead = redis_client("redis://127.0.0.1:1/0")
    breakers = {shop.id: ClusterBreaker(dead, shop.id, shop.circuit_breaker, key_prefix="t:")}
    idempotency = IdempotencyStore(dead, key_prefix="t:")
    gate = Gate(dead, idempotency, ClusterRateLimiter(dead, key_prefix="t:"),
                RetryBudget(dead, key_prefix="t:"), lambda i: breakers[i.id])
    passage = gate.enter(shop, "k1", "job-1", 10_000, "job-1:0:1:0", first_attempt=True,
                         budget_pending=False, max_deliveries=3)
    assert passage.claim.claim is Claim.CLAIMED and passage.permit is not None
    gate.settle(shop, passage.permit, "k1", "job-1", "job-1", success=True, counts=True)
    again = gate.enter(shop, "k1", "job-2", 10_000, "job-2:0:1:0", first_attempt=True,
                       budget_pending=False, max_deliveries=3)
    assert again.claim.claim is Claim.SUCCEEDED


def test_a_disabled_breaker_is_left_out_of_the_script(rig_for: Callable[..., Rig]) -> None:
    shop = make_integration()
    shop = replace(shop, circuit_breaker=replace(shop.circuit_breaker, enabled=False))
    rig = rig_for(shop)
    for n in range(2):  # the first run loads the script
        passage = rig.enter(shop, key=f"k{n}", holder=f"job-{n}", delivery=f"job-{n}:0:1:0")
        assert passage.permit is not None and passage.permit.token is None
        rig.sent.clear()
        rig.gate.settle(shop, passage.permit, f"k{n}", f"job-{n}", f"job-{n}", success=True,
                        counts=True)
    assert rig.sent == ["EVALSHA"]


def test_audit_rows_ride_on_the_settle_round_trip(rig_for: Callable[..., Rig],
                                                   client: redis.Redis) -> None:
    from recovery.audit.ops import Op, decode_ops
    from recovery.audit.spool import AuditBatcher, RedisSpool

    shop = make_integration()
    rig = rig_for(shop)
    spool = RedisSpool(rig.client, rig.prefix)
    batcher = AuditBatcher(None, spool, interval_s=3600)  # type: ignore[arg-type]
    ops = [Op("attempt", "job-1", n, {"n": n}, born=0.0) for n in range(3)]
    batcher.restore(ops)  # buffered, without starting the drain thread (there is no database)
    for n in range(2):  # the first run loads the script
        passage = rig.enter(shop, key=f"k{n}", holder=f"job-{n}", delivery=f"job-{n}:0:1:0")
        assert passage.permit is not None
        taken = batcher.take_for_spool()
        if n == 1:
            assert taken is None  # nothing buffered any more
            rig.sent.clear()
        audit = taken[1] if taken is not None else None
        assert rig.gate.settle(shop, passage.permit, f"k{n}", f"job-{n}", f"job-{n}",
                               success=True, counts=True, audit=audit) is (n == 0)
    assert rig.sent == ["EVALSHA"]
    entries = client.xrange(spool.key)
    assert len(entries) == 1 and decode_ops(entries[0][1][b"ops"]) == ops
    assert batcher.buffered() == 0


def test_audit_rows_go_back_to_the_buffer_when_the_settle_cannot_run() -> None:
    from recovery.audit.ops import Op
    from recovery.audit.spool import AuditBatcher, RedisSpool

    shop = make_integration()
    dead = redis_client("redis://127.0.0.1:1/0")
    breakers = {shop.id: ClusterBreaker(dead, shop.id, shop.circuit_breaker, key_prefix="t:")}
    gate = Gate(dead, IdempotencyStore(dead, key_prefix="t:"),
                ClusterRateLimiter(dead, key_prefix="t:"), RetryBudget(dead, key_prefix="t:"),
                lambda i: breakers[i.id])
    batcher = AuditBatcher(None, RedisSpool(dead, "t:"), interval_s=3600)  # type: ignore[arg-type]
    batcher.restore([Op("attempt", "job-1", 1, {"n": 1}, born=0.0)])
    passage = gate.enter(shop, "k1", "job-1", 10_000, "job-1:0:1:0", first_attempt=True,
                         budget_pending=False, max_deliveries=3)
    taken = batcher.take_for_spool()
    assert taken is not None and batcher.buffered() == 0
    assert gate.settle(shop, passage.permit, "k1", "job-1", "job-1", success=True, counts=True,
                       audit=taken[1]) is False
    batcher.restore(taken[0])
    assert batcher.buffered() == 1
