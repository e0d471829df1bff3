"""The cluster retry budget against a real Redis (db 15, a private key prefix): the Lua script
agrees with the in-process budget, holds across processes, and stands aside when Redis is down.
The last test runs a real worker once the budget is wired into the pipeline."""

from __future__ import annotations

import multiprocessing
import uuid
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry
from structlog.testing import capture_logs

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from recovery.state.budget import LocalRetryBudget, RetryBudget, RetryBudgetConfig
from tests.integration.conftest import wait_for_status
from tests.integration.test_job_flow import call_attempts, integration

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"
#: A realistic epoch time in ms for tests that pin the script's clock.
PINNED_MS = 1_800_000_000_000.0




@pytest.fixture
def budget(client: redis.Redis, prefix: str) -> RetryBudget:
    return RetryBudget(client, key_prefix=prefix)


def test_floor_then_refusal_on_the_servers_clock(
    budget: RetryBudget, client: redis.Redis, prefix: str
) -> None:
    config = RetryBudgetConfig(ratio=0.2, floor=2, window_ms=10_000)
    assert [budget.try_charge_retry("api", config) for _ in range(2)] == [0.0, 0.0]
    wait = budget.try_charge_retry("api", config)
    assert 9.0 < wait <= 10.0
    for _ in range(5):
        budget.note_first_attempt("api", config)
    assert budget.try_charge_retry("api", config) == 0.0  # 2 + 0.2 x 5 = 3 allowed
    assert budget.try_charge_retry("api", config) > 0
    assert budget.usage("api", config) == {
        "first_attempts": 5, "retries": 3, "allowed": 3, "window_ms": 10_000,
    }
    assert sum(int(v) for v in client.hvals(f"{prefix}budget:api:retry")) == 3


def test_keys_expire_and_old_slots_are_pruned(
    budget: RetryBudget, client: redis.Redis, prefix: str
) -> None:
    config = RetryBudgetConfig(window_ms=1000)
    key = f"{prefix}budget:api:first"
    for offset in (0, 300, 2_000):  # the third note opens a new slot and prunes the others
        budget._run("api", "note", config, now_ms=PINNED_MS + offset)
    assert client.hgetall(key) == {str(int(PINNED_MS) + 2_000).encode(): b"1"}
    assert 0 < client.pttl(key) <= 1100
    budget.try_charge_retry("api", config)
    assert 0 < client.pttl(f"{prefix}budget:api:retry") <= 1100


def test_room_waits_for_the_retries_whose_first_attempts_left_with_them(
    budget: RetryBudget,
) -> None:
    """3 first attempts pay for 2 + 2 retries (ratio 1, floor 1). At 10 s the first retries
    leave with the first attempts that paid for them, leaving 2 retries against a floor of 1:
    room only comes at 15 s, when the later retries leave."""
    config = RetryBudgetConfig(ratio=1.0, floor=1)
    for _ in range(3):
        budget._run("api", "note", config, now_ms=PINNED_MS)
    for at in (0, 0, 5_000, 5_000):
        assert budget._run("api", "charge", config, now_ms=PINNED_MS + at) == b"0"
    assert float(budget._run("api", "charge", config, now_ms=PINNED_MS + 6_000)) == 9_000


def test_the_allowance_survives_floating_point(budget: RetryBudget) -> None:
    config = RetryBudgetConfig(ratio=0.29, floor=0)
    for _ in range(100):
        budget.note_first_attempt("api", config)
    assert budget.usage("api", config)["allowed"] == 29  # 0.29 * 100 is 28.999...


operations = st.lists(
    st.tuples(st.sampled_from(["first", "retry"]),
              st.one_of(st.sampled_from([0, 10, 100, 1000]), st.integers(0, 700))),
    max_size=40,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=operations,
    ratio=st.sampled_from([0.0, 0.2, 0.29, 1.0]),
    floor=st.integers(0, 3),
    window_ms=st.sampled_from([100, 1000, 2500]),
)
def test_the_script_decides_exactly_as_the_in_process_budget(
    budget: RetryBudget, ops: list[tuple[str, int]], ratio: float, floor: int, window_ms: int
) -> None:
    config = RetryBudgetConfig(ratio=ratio, floor=floor, window_ms=window_ms)
    now = PINNED_MS
    local = LocalRetryBudget(clock_ms=lambda: now)
    integration_id = uuid.uuid4().hex
    for kind, gap_ms in ops:
        now += gap_ms
        if kind == "first":
            budget._run(integration_id, "note", config, now_ms=now)
            local.note_first_attempt(integration_id, config)
            continue
        in_redis = float(budget._run(integration_id, "charge", config, now_ms=now))
        assert in_redis == pytest.approx(local.try_charge_retry(integration_id, config) * 1000)
    firsts, retries, allowed = budget._run(integration_id, "usage", config, now_ms=now)
    expected = local.usage(integration_id, config)
    assert (firsts, retries, allowed) == (
        expected["first_attempts"], expected["retries"], expected["allowed"]
    )


def _charge(prefix: str, attempts: int, start: Event, results: Queue[int]) -> None:
    """A separate worker process with its own Redis connection."""
    own = RetryBudget(redis.Redis.from_url(REDIS_URL), key_prefix=prefix)
    config = RetryBudgetConfig(ratio=0.5, floor=4, window_ms=60_000)
    start.wait(10)
    results.put(sum(1 for _ in range(attempts) if own.try_charge_retry("shared", config) == 0.0))


def test_processes_charging_together_never_exceed_the_budget(
    budget: RetryBudget, prefix: str
) -> None:
    config = RetryBudgetConfig(ratio=0.5, floor=4, window_ms=60_000)
    for _ in range(20):
        budget.note_first_attempt("shared", config)
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_charge, args=(prefix, 30, start, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    start.set()
    granted = sum(results.get(timeout=30) for _ in workers)
    for worker in workers:
        worker.join(timeout=10)
    assert granted == 14  # 4 + 0.5 x 20, of the 90 asked for
    assert budget.usage("shared", config)["retries"] == 14


def test_an_unreachable_redis_falls_back_to_the_process_with_one_warning() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    shared = RetryBudget(dead, key_prefix="test:unreachable:")
    config = RetryBudgetConfig(ratio=0.0, floor=2)
    with capture_logs() as logs:
        shared.note_first_attempt("api", config)
        charged = [shared.try_charge_retry("api", config) for _ in range(3)]
        usage = shared.usage("api", config)
    assert charged[:2] == [0.0, 0.0]
    assert charged[2] > 9
    assert usage["first_attempts"] == 1 and usage["retries"] == 2
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["event"], w["component"]) for w in warnings] == [
        ("redis_unavailable", "retry_budget")
    ]


def test_a_retry_over_budget_is_deferred_without_spending_an_attempt(
    configure: Any, upstream: FaultServer, start_worker: Any, redis_client: redis.Redis
) -> None:
    entry = integration(upstream.url, retry_budget={"ratio": 0, "floor": 1, "window_ms": 2000})
    env = configure([entry])
    upstream.set_script([503, 200])
    start_worker(env)
    rt = get_runtime()
    config = rt.registry.get("shop").retry_budget
    assert rt.budget.try_charge_retry("shop", config) == 0.0  # someone else took the floor
    job_id = recovery.enqueue("shop", "POST", "/orders", json={"id": 1})
    job = wait_for_status(rt.engine, job_id, {"succeeded", "degraded", "failed", "dead"})
    assert job["status"] == "succeeded"
    calls = call_attempts(job)
    assert [(a["number"], a["http_status"]) for a in calls] == [(1, 503), (2, 200)]
    deferrals = [a for a in job["attempts"] if a["kind"] == "deferral"]
    assert [(d["number"], d["delay_source"]) for d in deferrals][:1] == [(2, "retry-budget")]
    assert all(d["delay_source"] == "retry-budget" for d in deferrals)
    assert 0 < deferrals[0]["delay_ms"] <= 4000  # the wait (<= a window) plus spread
    assert job["attempt_count"] == 2
    assert len(upstream.requests()) == 2
