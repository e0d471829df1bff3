"""Cluster rate limits against a real Redis (db 15, a private key prefix), plus the in-process
limiter they fall back to."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry
from structlog.testing import capture_logs

from recovery.config.registry import RateLimitConfig
from recovery.state.ratelimit import MAX_PAUSE_S, ClusterRateLimiter, LocalRateLimiter, RedisOutage

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"




@pytest.fixture
def limiter(client: redis.Redis, prefix: str) -> ClusterRateLimiter:
    return ClusterRateLimiter(client, key_prefix=prefix)


def _count_grants(prefix: str, attempts: int, start: Event, results: Queue[int]) -> None:
    """Runs in a child process with its own Redis connection, as a separate worker would."""
    own = ClusterRateLimiter(redis.Redis.from_url(REDIS_URL), key_prefix=prefix)
    config = RateLimitConfig(window_ms=60_000, max_requests=25)
    start.wait(10)
    results.put(sum(1 for _ in range(attempts) if own.acquire("shared", config) == 0.0))


def test_grants_up_to_the_limit_then_asks_to_wait(
    limiter: ClusterRateLimiter, client: redis.Redis, prefix: str
) -> None:
    config = RateLimitConfig(window_ms=60_000, max_requests=5)
    assert [limiter.acquire("api", config) for _ in range(5)] == [0.0] * 5
    wait = limiter.acquire("api", config)
    assert 59 < wait <= 60
    assert client.zcard(f"{prefix}ratelimit:api:log") == 5  # the refusal recorded nothing
    assert limiter.usage("api", config) == {
        "used": 5,
        "limit": 5,
        "window_ms": 60_000,
        "paused_for_s": 0.0,
        "pause_reason": "",
    }


def test_integrations_have_separate_windows(limiter: ClusterRateLimiter) -> None:
    config = RateLimitConfig(window_ms=60_000, max_requests=1)
    assert limiter.acquire("a", config) == 0.0
    assert limiter.acquire("b", config) == 0.0
    assert limiter.acquire("a", config) > 0


def test_two_processes_sharing_a_limit_never_exceed_it(prefix: str) -> None:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    results: Queue[int] = ctx.Queue()
    workers = [
        ctx.Process(target=_count_grants, args=(prefix, 40, start, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    start.set()
    counts = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(10)
    assert sum(counts) == 25
    assert all(count < 40 for count in counts)


def test_window_slides(limiter: ClusterRateLimiter) -> None:
    config = RateLimitConfig(window_ms=400, max_requests=2)
    assert limiter.acquire("api", config) == 0.0
    time.sleep(0.2)
    assert limiter.acquire("api", config) == 0.0
    wait = limiter.acquire("api", config)
    assert 0 < wait <= 0.2  # until the first grant ages out, not the whole window
    time.sleep(wait + 0.02)
    assert limiter.acquire("api", config) == 0.0
    assert 0 < limiter.acquire("api", config) <= 0.2  # the second grant is still in the window


def test_after_the_limit_shrinks_the_wait_is_for_enough_grants_to_age_out(
    limiter: ClusterRateLimiter,
) -> None:
    for _ in range(3):
        assert limiter.acquire("api", RateLimitConfig(window_ms=2_000, max_requests=3)) == 0.0
        time.sleep(0.15)
    # Grants 0.45 s, 0.3 s and 0.15 s ago: one slot under the new limit needs all three gone.
    wait = limiter.acquire("api", RateLimitConfig(window_ms=2_000, max_requests=1))
    assert 1.7 < wait <= 1.85


def test_pause_only_ever_extends(limiter: ClusterRateLimiter) -> None:
    limiter.pause("api", 10, "429 Retry-After: 10")
    assert 9 < limiter.paused_for("api") <= 10
    limiter.pause("api", 1, "429 Retry-After: 1")
    assert 9 < limiter.paused_for("api") <= 10
    limiter.pause("api", 20, "429 Retry-After: 20")
    assert 19 < limiter.paused_for("api") <= 20
    assert limiter.paused_for("other") == 0.0


def test_acquire_while_paused_returns_the_rest_of_the_pause(
    limiter: ClusterRateLimiter, client: redis.Redis, prefix: str
) -> None:
    config = RateLimitConfig(window_ms=60_000, max_requests=100)
    limiter.pause("api", 5, "upstream asked us to back off")
    assert 4 < limiter.acquire("api", config) <= 5
    assert limiter.usage("api", config)["used"] == 0
    assert 4 < limiter.usage("api", config)["paused_for_s"] <= 5
    assert client.zcard(f"{prefix}ratelimit:api:log") == 0


def test_pause_ends_and_calls_resume(limiter: ClusterRateLimiter) -> None:
    config = RateLimitConfig(window_ms=60_000, max_requests=100)
    limiter.pause("api", 0.15, "short pause")
    assert limiter.acquire("api", config) > 0
    time.sleep(0.2)
    assert limiter.paused_for("api") == 0.0
    assert limiter.acquire("api", config) == 0.0


def test_keys_expire(limiter: ClusterRateLimiter, client: redis.Redis, prefix: str) -> None:
    limiter.acquire("api", RateLimitConfig(window_ms=5_000, max_requests=3))
    limiter.pause("api", 2, "test")
    assert 0 < client.pttl(f"{prefix}ratelimit:api:log") <= 5_000
    assert 0 < client.pttl(f"{prefix}ratelimit:api:not_before") <= 2_000


def test_a_zero_or_negative_pause_changes_nothing(limiter: ClusterRateLimiter) -> None:
    limiter.pause("api", 0, "nothing")
    limiter.pause("api", -3, "nothing")
    assert limiter.paused_for("api") == 0.0


def test_bad_config_and_pause_are_refused_with_a_sentence(limiter: ClusterRateLimiter) -> None:
    with pytest.raises(ValueError, match="rate limit of integration 'api' must allow"):
        limiter.acquire("api", RateLimitConfig(window_ms=1000, max_requests=0))
    with pytest.raises(ValueError, match="must be a number of seconds, got nan"):
        limiter.pause("api", float("nan"), "bad header")
    assert limiter.paused_for("api") == 0.0


@pytest.mark.parametrize("seconds", [3_153_600_000.0, 1e300, float("inf")])
def test_a_runaway_pause_is_bounded_in_redis(limiter: ClusterRateLimiter, client: redis.Redis,
                                             prefix: str, seconds: float) -> None:
    """Whatever a caller asks, nothing longer than MAX_PAUSE_S (7 days) reaches Redis."""
    with capture_logs() as logs:
        limiter.pause("api", seconds, "HTTP 429")
    assert MAX_PAUSE_S - 5 < limiter.paused_for("api") <= MAX_PAUSE_S
    assert 0 < client.pttl(f"{prefix}ratelimit:api:not_before") <= MAX_PAUSE_S * 1000
    assert [e["cap_s"] for e in logs if e["event"] == "rate_limit_pause_capped"] == [MAX_PAUSE_S]


@pytest.mark.parametrize("shared", [True, False])
def test_resume_lifts_the_pause_and_its_reason(client: redis.Redis, prefix: str,
                                               shared: bool) -> None:
    limiter = ClusterRateLimiter(client if shared else None, key_prefix=prefix)
    config = RateLimitConfig(window_ms=60_000, max_requests=5)
    limiter.pause("api", 600, "HTTP 429 Too Many Requests")
    usage = limiter.usage("api", config)
    assert usage["pause_reason"] == "HTTP 429 Too Many Requests"
    assert 599 < usage["paused_for_s"] <= 600
    assert 599 < limiter.resume("api") <= 600
    assert limiter.usage("api", config)["pause_reason"] == ""
    assert limiter.paused_for("api") == 0.0
    assert limiter.acquire("api", config) == 0.0
    assert limiter.resume("api") == 0.0  # nothing left to lift
    if shared:
        assert not client.exists(f"{prefix}ratelimit:api:not_before",
                                 f"{prefix}ratelimit:api:reason")


def test_the_reason_lives_exactly_as_long_as_the_pause(limiter: ClusterRateLimiter,
                                                       client: redis.Redis, prefix: str) -> None:
    limiter.pause("api", 30, "first")
    limiter.pause("api", 5, "shorter: ignored")
    assert client.get(f"{prefix}ratelimit:api:reason") == b"first"
    limiter.pause("api", 60, "longer")
    assert client.get(f"{prefix}ratelimit:api:reason") == b"longer"
    ttl = client.pttl(f"{prefix}ratelimit:api:reason")
    assert abs(ttl - client.pttl(f"{prefix}ratelimit:api:not_before")) < 50


def test_falls_back_to_the_process_when_redis_is_unreachable() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    limiter = ClusterRateLimiter(dead, key_prefix="test:unreachable:")
    config = RateLimitConfig(window_ms=60_000, max_requests=2)
    with capture_logs() as logs:
        granted = [limiter.acquire("api", config) for _ in range(3)]
        limiter.pause("api", 3, "429")
        paused = limiter.paused_for("api")
    assert granted[:2] == [0.0, 0.0]
    assert granted[2] > 59
    assert 2 < paused <= 3
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["redis_unavailable"]


def test_without_redis_the_limiter_is_in_process() -> None:
    limiter = ClusterRateLimiter(None, key_prefix="unused:")
    config = RateLimitConfig(window_ms=60_000, max_requests=1)
    assert limiter.acquire("api", config) == 0.0
    assert limiter.acquire("api", config) > 59
    assert limiter.usage("api", config)["used"] == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_limiter_waits_for_the_entry_that_frees_a_slot_after_the_limit_shrinks() -> None:
    clock = FakeClock()
    local = LocalRateLimiter(clock)
    for _ in range(3):
        assert local.acquire("api", RateLimitConfig(window_ms=10_000, max_requests=3)) == 0.0
        clock.now += 1
    # Grants at 1000, 1001, 1002; now 1003. With a limit of 1 all three must age out first.
    assert local.acquire("api", RateLimitConfig(window_ms=10_000, max_requests=1)) == 9.0


def test_local_pause_extends_only_and_expires() -> None:
    clock = FakeClock()
    local = LocalRateLimiter(clock)
    local.pause("api", 10, "a")
    local.pause("api", 2, "b")
    assert local.paused_for("api") == 10
    clock.now += 10
    assert local.paused_for("api") == 0.0
    assert local.acquire("api", RateLimitConfig(window_ms=1000, max_requests=1)) == 0.0


@settings(max_examples=200, deadline=None)
@given(
    window_ms=st.integers(min_value=1, max_value=5_000),
    max_requests=st.integers(min_value=1, max_value=8),
    steps=st.lists(st.integers(min_value=0, max_value=3_000), min_size=1, max_size=60),
)
def test_local_limiter_keeps_the_limit_and_its_promises(
    window_ms: int, max_requests: int, steps: list[int]
) -> None:
    clock = FakeClock()
    local = LocalRateLimiter(clock)
    config = RateLimitConfig(window_ms=window_ms, max_requests=max_requests)
    granted: list[float] = []

    def acquire() -> float:
        in_window = [t for t in granted if t > clock.now - window_ms / 1000]
        wait = local.acquire("api", config)
        if wait == 0.0:
            assert len(in_window) < max_requests
            granted.append(clock.now)
        else:
            assert len(in_window) == max_requests  # refused only when truly full
        return wait

    for step_ms in steps:
        clock.now += step_ms / 1000
        wait = acquire()
        if wait > 0.002:
            clock.now += wait - 0.001
            assert acquire() > 0  # not before the promised time
            wait = 0.001
        if wait > 0:
            clock.now += wait + 1e-6
            assert acquire() == 0.0  # the promised slot is there


def test_redis_is_tried_again_after_an_outage_and_its_return_is_logged() -> None:
    outage = RedisOutage("test", retry_after_s=1.0)
    answers: list[object] = [redis.exceptions.ConnectionError("refused"), "from redis"]

    def in_redis() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    with capture_logs() as logs:
        assert outage.run(in_redis, lambda: "in process") == "in process"
        assert outage.run(in_redis, lambda: "in process") == "in process"  # not retried yet
        time.sleep(1.05)
        assert outage.run(in_redis, lambda: "in process") == "from redis"
    assert [entry["event"] for entry in logs] == ["redis_unavailable", "redis_restored"]
    assert answers == []
