"""The Redis breaker against a real Redis (db 15, own key prefix): each script's transitions,
races between threads and processes, round trips, and the fallback when Redis is gone."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from recovery.config.registry import BreakerConfig
from recovery.state.breaker import BreakerOpenError, ClusterBreaker, Permit
from recovery.state.breaker.local import LocalBackend
from recovery.state.breaker.redis_backend import RedisBackend
from recovery.state.breaker.types import Limits

REDIS_URL = "redis://127.0.0.1:6379/15"
CONFIG = BreakerConfig(enabled=True, threshold=3, reset_timeout_ms=30_000,
                       call_timeout_ms=30_000)

pytestmark = pytest.mark.integration




Events = list[tuple[str, str, str]]


def make(client: redis.Redis | None, prefix: str, config: BreakerConfig = CONFIG,
         events: Events | None = None, integration: str = "api", **kwargs: Any
         ) -> ClusterBreaker:
    def listen(integration: str, old: str, new: str, reason: str, at: Any) -> None:
        if events is not None:
            events.append((old, new, reason))

    return ClusterBreaker(client, integration, config, key_prefix=prefix,
                          listeners=[listen], **kwargs)


def fail(breaker: ClusterBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record(breaker.acquire(), success=False)


def test_closed_opens_at_the_threshold(client: redis.Redis, prefix: str) -> None:
    events: Events = []
    breaker = make(client, prefix, events=events)
    fail(breaker, 2)
    assert breaker.snapshot().state == "closed"
    assert breaker.snapshot().consecutive_failures == 2
    fail(breaker, 1)
    snap = breaker.snapshot()
    assert (snap.state, snap.backend, snap.consecutive_failures) == ("open", "redis", 3)
    assert events == [("closed", "open", "consecutive_failures=3")]
    assert client.exists(f"{prefix}breaker:api")


def test_failure_rate_trips_only_with_minimum_calls(client: redis.Redis, prefix: str) -> None:
    events: Events = []
    config = replace(CONFIG, threshold=100, failure_rate=0.5, minimum_calls=6)
    breaker = make(client, prefix, config, events)
    for success in (False, True, False, True, False):
        breaker.record(breaker.acquire(), success=success)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_failures) == ("closed", 5, 3)
    breaker.record(breaker.acquire(), success=True)
    assert events == [("closed", "open", "failure_rate=0.50 over 6 calls")]


def test_open_refuses_with_retry_after(client: redis.Redis, prefix: str) -> None:
    breaker = make(client, prefix, replace(CONFIG, reset_timeout_ms=5000))
    fail(breaker, 3)
    with pytest.raises(BreakerOpenError) as refused:
        breaker.acquire()
    assert 4.0 < refused.value.retry_after_s <= 5.0
    assert str(refused.value).startswith("Circuit breaker for 'api' is open; next probe allowed")


def test_open_moves_to_half_open_on_server_time(client: redis.Redis, prefix: str) -> None:
    events: Events = []
    breaker = make(client, prefix, replace(CONFIG, reset_timeout_ms=200), events)
    fail(breaker, 3)
    time.sleep(0.25)
    permit = breaker.acquire()
    assert permit.probe
    assert events[-1] == ("open", "half_open", "reset_timeout_elapsed")
    assert breaker.snapshot().state == "half_open"


def test_exactly_half_open_max_calls_probes(client: redis.Redis, prefix: str) -> None:
    breaker = make(client, prefix, replace(CONFIG, half_open_max_calls=3))
    breaker.force_open("test", duration_s=0)
    permits = [breaker.acquire() for _ in range(3)]
    assert all(permit.probe for permit in permits)
    assert len({permit.token for permit in permits}) == 3
    with pytest.raises(BreakerOpenError) as refused:
        breaker.acquire()
    assert refused.value.state == "half_open"
    assert breaker.snapshot().probes_in_flight == 3


def test_probe_success_closes(client: redis.Redis, prefix: str) -> None:
    events: Events = []
    breaker = make(client, prefix, events=events, success_threshold=2)
    breaker.force_open("test", duration_s=0)
    breaker.record(breaker.acquire(), success=True)
    assert breaker.snapshot().state == "half_open"
    breaker.record(breaker.acquire(), success=True)
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.opened_at) == ("closed", 0, None)
    assert events[-1] == ("half_open", "closed", "probe_succeeded")


def test_probe_failure_reopens_with_a_fresh_open_time(client: redis.Redis, prefix: str) -> None:
    events: Events = []
    breaker = make(client, prefix, replace(CONFIG, reset_timeout_ms=200), events)
    fail(breaker, 3)
    first_opened = breaker.snapshot().opened_at
    time.sleep(0.25)
    breaker.record(breaker.acquire(), success=False)
    snap = breaker.snapshot()
    assert events[-1] == ("half_open", "open", "probe_failed")
    assert snap.state == "open"
    assert first_opened is not None and snap.opened_at is not None
    assert snap.opened_at > first_opened
    assert snap.time_to_half_open_s is not None and snap.time_to_half_open_s > 0.1
    assert (snap.failed_probes, snap.open_ms) == (1, 400)  # doubled by the failed probe


def fail_probe_when_due(breaker: ClusterBreaker) -> None:
    """Wait (on the server clock) for the open period to end, then fail one probe."""
    snap = breaker.snapshot()
    assert snap.time_to_half_open_s is not None
    time.sleep(snap.time_to_half_open_s + 0.01)
    permit = breaker.acquire()
    assert permit.probe
    breaker.record(permit, success=False)


def test_failed_probes_grow_the_open_time_to_the_cap_and_success_resets(
        client: redis.Redis, prefix: str) -> None:
    breaker = make(client, prefix, replace(CONFIG, reset_timeout_ms=100,
                                           max_reset_timeout_ms=300))
    fail(breaker, 3)
    periods = [breaker.snapshot().open_ms]
    for _ in range(3):
        fail_probe_when_due(breaker)
        periods.append(breaker.snapshot().open_ms)
    assert periods == [100, 200, 300, 300]
    assert breaker.snapshot().failed_probes == 3
    assert client.hget(f"{prefix}breaker:api", "failed_probes") == b"3"
    time.sleep(breaker.snapshot().time_to_half_open_s or 0)
    breaker.record(breaker.acquire(), success=True)
    snap = breaker.snapshot()
    assert (snap.state, snap.failed_probes, snap.open_ms) == ("closed", 0, None)
    fail(breaker, 3)
    assert breaker.snapshot().open_ms == 100


def test_factor_one_keeps_the_open_time_fixed(client: redis.Redis, prefix: str) -> None:
    breaker = make(client, prefix, replace(CONFIG, reset_timeout_ms=100,
                                           reset_backoff_factor=1.0))
    fail(breaker, 3)
    for _ in range(2):
        fail_probe_when_due(breaker)
        assert breaker.snapshot().open_ms == 100
    assert breaker.snapshot().failed_probes == 2


def test_force_close_resets_the_streak_and_force_open_keeps_it(client: redis.Redis,
                                                               prefix: str) -> None:
    breaker = make(client, prefix)
    breaker.force_open("test", duration_s=0)
    breaker.record(breaker.acquire(), success=False)
    assert (breaker.snapshot().failed_probes, breaker.snapshot().open_ms) == (1, 60_000)
    breaker.force_open("again", duration_s=0)
    breaker.record(breaker.acquire(), success=False)
    assert (breaker.snapshot().failed_probes, breaker.snapshot().open_ms) == (2, 120_000)
    breaker.force_close("healthy")
    assert breaker.snapshot().failed_probes == 0
    fail(breaker, 3)
    assert breaker.snapshot().open_ms == 30_000


def test_a_power_that_overflows_opens_for_the_cap(client: redis.Redis, prefix: str) -> None:
    """100 ** 160 is past the largest double: inf in Lua, OverflowError in Python; both cap."""
    config = replace(CONFIG, reset_backoff_factor=100.0, max_reset_timeout_ms=3_000_000)
    breaker = make(client, prefix, config)
    for _ in range(160):
        breaker.force_open("test", duration_s=0)
        breaker.record(breaker.acquire(), success=False)
    snap = breaker.snapshot()
    assert (snap.failed_probes, snap.open_ms) == (160, 3_000_000)
    assert Limits.from_config("api", config, 1).open_ms(160) == 3_000_000


def test_neutral_records(client: redis.Redis, prefix: str) -> None:
    events: Events = []
    breaker = make(client, prefix, events=events)
    fail(breaker, 2)
    breaker.record(breaker.acquire(), success=False, counts=False)
    assert breaker.snapshot().consecutive_failures == 2
    breaker.force_open("test", duration_s=0)
    probe = breaker.acquire()
    breaker.record(probe, success=False, counts=False)
    assert breaker.snapshot().state == "half_open"
    assert breaker.acquire().probe
    assert [e[1] for e in events] == ["open", "half_open"]


def test_an_expired_probe_lease_frees_the_slot(client: redis.Redis, prefix: str) -> None:
    breaker = make(client, prefix, replace(CONFIG, call_timeout_ms=200))
    breaker.force_open("test", duration_s=0)
    assert breaker.acquire().probe
    with pytest.raises(BreakerOpenError) as refused:
        breaker.acquire()
    assert refused.value.retry_after_s <= 0.2
    time.sleep(0.25)
    assert breaker.acquire().probe


def test_a_call_that_started_before_the_trip_cannot_reopen(client: redis.Redis,
                                                           prefix: str) -> None:
    breaker = make(client, prefix)
    stale = breaker.acquire()
    fail(breaker, 3)
    breaker.force_close("recovered")
    breaker.record(stale, success=False)
    assert breaker.snapshot().consecutive_failures == 0


def test_force_open_and_close(client: redis.Redis, prefix: str) -> None:
    events: Events = []
    breaker = make(client, prefix, events=events)
    breaker.force_open("maintenance", duration_s=60)
    with pytest.raises(BreakerOpenError) as refused:
        breaker.acquire()
    assert refused.value.retry_after_s > 59
    breaker.force_open("again", duration_s=60)
    breaker.force_close("healthy")
    assert not breaker.acquire().probe
    assert events == [("closed", "open", "forced: maintenance"),
                      ("open", "closed", "forced: healthy")]


def test_a_transition_is_reported_by_one_process_only(client: redis.Redis, prefix: str) -> None:
    first_events: Events = []
    second_events: Events = []
    first = make(client, prefix, events=first_events)
    second = make(client, prefix, events=second_events)
    permits = [first.acquire(), second.acquire(), first.acquire()]
    first.record(permits[0], success=False)
    second.record(permits[1], success=False)
    first.record(permits[2], success=False)
    assert first_events == [("closed", "open", "consecutive_failures=3")]
    assert second_events == []


def test_scripts_survive_a_script_flush(client: redis.Redis, prefix: str) -> None:
    breaker = make(client, prefix)
    fail(breaker, 1)
    client.script_flush()
    fail(breaker, 1)
    assert breaker.snapshot().consecutive_failures == 2


class CountingRedis(redis.Redis):
    commands: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)


def test_a_closed_successful_call_costs_two_round_trips(prefix: str) -> None:
    counting = CountingRedis.from_url(REDIS_URL)
    counting.commands = []
    breaker = make(counting, prefix)
    breaker.record(breaker.acquire(), success=True)  # loads the scripts if Redis lacks them
    counting.commands.clear()
    assert breaker.call(lambda: "ok") == "ok"
    assert counting.commands == ["EVALSHA", "EVALSHA"]
    counting.close()


def test_sixteen_threads_get_exactly_n_probes(client: redis.Redis, prefix: str) -> None:
    events: Events = []
    lock = threading.Lock()
    breaker = make(client, prefix, replace(CONFIG, half_open_max_calls=2))
    breaker.force_open("test", duration_s=0)
    others = [make(client, prefix, replace(CONFIG, half_open_max_calls=2), events)
              for _ in range(16)]
    barrier = threading.Barrier(16)
    granted: list[Permit] = []

    def hammer(one: ClusterBreaker) -> None:
        barrier.wait()
        for _ in range(25):
            try:
                permit = one.acquire()
            except BreakerOpenError:
                continue
            with lock:
                granted.append(permit)

    threads = [threading.Thread(target=hammer, args=(one,)) for one in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 2
    assert all(permit.probe for permit in granted)
    assert [e[1] for e in events] == ["half_open"]


def _hammer_process(prefix: str, start: Any, results: Any) -> None:
    connection = redis.Redis.from_url(REDIS_URL)
    events: Events = []
    breaker = make(connection, prefix, replace(CONFIG, half_open_max_calls=3), events)
    start.wait()
    probes = 0
    for _ in range(40):
        with contextlib.suppress(BreakerOpenError):
            probes += int(breaker.acquire().probe)
    results.put((probes, len(events)))


def test_four_processes_get_exactly_n_probes(client: redis.Redis, prefix: str) -> None:
    make(client, prefix, replace(CONFIG, half_open_max_calls=3)).force_open("t", duration_s=0)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    results = context.Queue()
    processes = [context.Process(target=_hammer_process, args=(prefix, start, results))
                 for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert sum(probes for probes, _ in outcomes) == 3
    assert sum(transitions for _, transitions in outcomes) == 1


def test_unreachable_redis_falls_back_to_the_process_with_one_warning(prefix: str) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    events: Events = []
    breaker = make(dead, prefix, events=events, integration=f"down-{uuid.uuid4().hex[:6]}")
    with capture_logs() as logs:
        fail(breaker, 3)
        with pytest.raises(BreakerOpenError):
            breaker.acquire()
        snap = breaker.snapshot()
    warnings = [entry for entry in logs if entry["event"] == "breaker_redis_unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "ConnectionError" in warnings[0]["error"]
    assert (snap.state, snap.backend) == ("open", "local")
    assert events == [("closed", "open", "consecutive_failures=3")]


def test_a_redis_permit_recorded_while_redis_is_down_counts_locally(
        client: redis.Redis, prefix: str) -> None:
    breaker = make(client, prefix, replace(CONFIG, threshold=1))
    permit = breaker.acquire()
    assert permit.token is not None and permit.token.startswith("r:")
    dead = make(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5), prefix,
                replace(CONFIG, threshold=1))
    dead.record(permit, success=False)
    snap = dead.snapshot()
    assert (snap.state, snap.backend) == ("open", "local")
    assert client.hget(f"{prefix}breaker:api", "state") is None


# --- the Lua scripts and the in-process breaker make the same decisions -------------------

OPS = st.lists(
    st.one_of(
        st.just(("acquire",)),
        st.tuples(st.just("record"), st.integers(0, 20),
                  st.sampled_from(["success", "failure", "neutral"])),
        st.tuples(st.just("force"), st.sampled_from(["open", "close"])),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, max_probes=st.integers(1, 3), rate=st.sampled_from([None, 0.5]),
       factor=st.sampled_from([1.0, 1.5, 2.0, 3.7]), cap=st.sampled_from([None, 45_001, 10**8]))
def test_lua_and_local_agree(client: redis.Redis, prefix: str, ops: list[tuple[Any, ...]],
                             max_probes: int, rate: float | None, factor: float,
                             cap: int | None) -> None:
    """No time passes that matters: leases and the open period are long, force-open is 0 s."""
    config = replace(CONFIG, half_open_max_calls=max_probes, failure_rate=rate,
                     minimum_calls=4, window_ms=10**10, reset_backoff_factor=factor,
                     max_reset_timeout_ms=cap)
    limits = Limits.from_config("api", config, 2)
    key = f"{prefix}breaker:eq-{uuid.uuid4().hex}"
    remote, local = RedisBackend(client, key), LocalBackend(lambda: 1_700_000_000_000)
    permits: list[tuple[int, str]] = []
    for index, op in enumerate(ops):
        if op[0] == "acquire":
            token = f"p{index}"
            a, b = remote.acquire(limits, token), local.acquire(limits, token)
            assert (a.granted, a.probe, a.epoch, a.state) == (b.granted, b.probe, b.epoch, b.state)
            assert _brief(a.transition) == _brief(b.transition)
            if a.granted:
                permits.append((a.epoch, token if a.probe else ""))
        elif op[0] == "record" and permits:
            epoch, token = permits[op[1] % len(permits)]
            assert _brief(remote.record(limits, epoch, token, op[2])) == _brief(
                local.record(limits, epoch, token, op[2]))
        elif op[0] == "force":
            open_ms = 0
            assert _brief(remote.force(limits, op[1], open_ms, "f")) == _brief(
                local.force(limits, op[1], open_ms, "f"))
        ra, lb = remote.snapshot(limits), local.snapshot(limits)
        assert (ra.state, ra.consecutive_failures, ra.probes_in_flight, ra.window_calls,
                ra.window_failures, ra.failed_probes, _open_ms(ra)) == (
            lb.state, lb.consecutive_failures, lb.probes_in_flight, lb.window_calls,
            lb.window_failures, lb.failed_probes, _open_ms(lb))
    client.delete(key)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reset=st.integers(1, 10**7), factor=st.floats(1.0, 100.0), extra=st.integers(0, 6 * 10**8),
       probes=st.integers(0, 8))
def test_lua_and_local_compute_the_same_open_time(client: redis.Redis, prefix: str, reset: int,
                                                  factor: float, extra: int,
                                                  probes: int) -> None:
    """The open time after n failed probes, to the millisecond, for any factor and cap."""
    config = replace(CONFIG, reset_timeout_ms=reset, reset_backoff_factor=factor,
                     max_reset_timeout_ms=reset + extra)
    limits = Limits.from_config("api", config, 1)
    key = f"{prefix}breaker:ms-{uuid.uuid4().hex}"
    remote, local = RedisBackend(client, key), LocalBackend(lambda: 1_700_000_000_000)
    for number in range(probes):
        for backend in (remote, local):
            backend.force(limits, "open", 0, "f")
            grant = backend.acquire(limits, f"p{number}")
            backend.record(limits, grant.epoch, f"p{number}", "failure")
    if probes == 0:
        for backend in (remote, local):
            for _ in range(3):
                backend.record(limits, backend.acquire(limits, "").epoch, "", "failure")
    ra, lb = remote.snapshot(limits), local.snapshot(limits)
    assert ra.failed_probes == lb.failed_probes == probes
    assert _open_ms(ra) == _open_ms(lb) == limits.open_ms(probes)
    client.delete(key)


def _open_ms(raw: Any) -> int | None:
    if raw.opened_at_ms is None or raw.open_until_ms is None:
        return None
    return int(raw.open_until_ms - raw.opened_at_ms)


def _brief(transition: Any) -> tuple[str, str, str] | None:
    if transition is None:
        return None
    return (transition.from_state, transition.to_state, transition.reason)
