"""The in-process breaker (`LocalBackend`, and `ClusterBreaker(None, ...)`): its rules, the
pybreaker face and the API the task pipeline uses. No Redis needed."""

from __future__ import annotations

import pickle
import threading
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

import pybreaker
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recovery.config.registry import BreakerConfig
from recovery.state.breaker import BreakerOpenError, ClusterBreaker, Permit
from recovery.state.breaker.local import LocalBackend
from recovery.state.breaker.types import Limits

CONFIG = BreakerConfig(enabled=True, threshold=3, reset_timeout_ms=1000, call_timeout_ms=500)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


def limits(config: BreakerConfig = CONFIG, success_threshold: int = 1) -> Limits:
    return Limits.from_config("api", config, success_threshold)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> LocalBackend:
    return LocalBackend(clock)


def fail(backend: LocalBackend, lim: Limits, times: int) -> list[Any]:
    transitions = []
    for _ in range(times):
        grant = backend.acquire(lim, "t")
        transitions.append(backend.record(lim, grant.epoch, "", "failure"))
    return transitions


def trip(backend: LocalBackend, lim: Limits) -> None:
    fail(backend, lim, lim.threshold)
    assert backend.snapshot(lim).state == "open"


def test_consecutive_failures_trip_at_the_threshold(backend: LocalBackend) -> None:
    lim = limits()
    transitions = fail(backend, lim, 3)
    assert transitions[:2] == [None, None]
    assert transitions[2] is not None
    assert (transitions[2].from_state, transitions[2].to_state) == ("closed", "open")
    assert transitions[2].reason == "consecutive_failures=3"


def test_a_success_resets_the_consecutive_count(backend: LocalBackend) -> None:
    lim = limits()
    fail(backend, lim, 2)
    backend.record(lim, backend.acquire(lim, "t").epoch, "", "success")
    assert fail(backend, lim, 2) == [None, None]
    assert backend.snapshot(lim).consecutive_failures == 2


def test_neutral_outcomes_change_nothing_while_closed(backend: LocalBackend) -> None:
    lim = limits()
    fail(backend, lim, 2)
    for _ in range(5):
        assert backend.record(lim, backend.acquire(lim, "t").epoch, "", "neutral") is None
    snap = backend.snapshot(lim)
    assert (snap.state, snap.consecutive_failures, snap.window_calls) == ("closed", 2, 2)


def test_failure_rate_trips_only_after_minimum_calls(backend: LocalBackend) -> None:
    config = replace(CONFIG, threshold=100, failure_rate=0.5, minimum_calls=6)
    lim = limits(config)
    outcomes = ["failure", "success", "failure", "success", "failure"]
    for outcome in outcomes:
        epoch = backend.acquire(lim, "t").epoch
        assert backend.record(lim, epoch, "", outcome) is None  # type: ignore[arg-type]
    transition = backend.record(lim, backend.acquire(lim, "t").epoch, "", "success")
    assert transition is not None
    assert transition.reason == "failure_rate=0.50 over 6 calls"


def test_failure_rate_below_the_limit_keeps_it_closed(backend: LocalBackend) -> None:
    lim = limits(replace(CONFIG, threshold=100, failure_rate=0.5, minimum_calls=4))
    for outcome in ["success", "success", "failure"] * 4:
        backend.record(lim, backend.acquire(lim, "t").epoch, "", outcome)  # type: ignore[arg-type]
    assert backend.snapshot(lim).state == "closed"


def test_old_buckets_leave_the_window(backend: LocalBackend, clock: Clock) -> None:
    lim = limits(replace(CONFIG, threshold=100, failure_rate=0.5, minimum_calls=4,
                         window_ms=10_000))
    fail(backend, lim, 3)
    assert backend.snapshot(lim).window_failures == 3
    clock.now += 10_000
    assert backend.snapshot(lim).window_failures == 0
    assert fail(backend, lim, 1) == [None]


def test_open_refuses_with_the_time_left(backend: LocalBackend, clock: Clock) -> None:
    lim = limits()
    trip(backend, lim)
    clock.now += 400
    grant = backend.acquire(lim, "t")
    assert not grant.granted
    assert grant.state == "open"
    assert grant.wait_s == pytest.approx(0.6)


def test_after_the_reset_timeout_one_probe_is_granted(backend: LocalBackend,
                                                      clock: Clock) -> None:
    lim = limits()
    trip(backend, lim)
    clock.now += 1000
    grant = backend.acquire(lim, "p1")
    assert grant.granted and grant.probe
    assert grant.transition is not None
    assert grant.transition.reason == "reset_timeout_elapsed"
    refused = backend.acquire(lim, "p2")
    assert not refused.granted
    assert refused.state == "half_open"
    assert refused.transition is None
    assert refused.wait_s == pytest.approx(0.5)  # the probe's lease, shorter than the reset


def test_probe_success_closes_and_clears_counts(backend: LocalBackend, clock: Clock) -> None:
    lim = limits()
    trip(backend, lim)
    clock.now += 1000
    grant = backend.acquire(lim, "p1")
    transition = backend.record(lim, grant.epoch, "p1", "success")
    assert transition is not None
    assert (transition.from_state, transition.to_state) == ("half_open", "closed")
    snap = backend.snapshot(lim)
    assert (snap.state, snap.consecutive_failures, snap.opened_at_ms) == ("closed", 0, None)


def test_closing_can_need_several_successful_probes(backend: LocalBackend,
                                                    clock: Clock) -> None:
    lim = limits(success_threshold=2)
    trip(backend, lim)
    clock.now += 1000
    first = backend.acquire(lim, "p1")
    assert backend.record(lim, first.epoch, "p1", "success") is None
    second = backend.acquire(lim, "p2")
    assert second.probe
    transition = backend.record(lim, second.epoch, "p2", "success")
    assert transition is not None and transition.to_state == "closed"


def test_probe_failure_reopens_with_a_fresh_open_time(backend: LocalBackend,
                                                      clock: Clock) -> None:
    lim = limits()
    trip(backend, lim)
    clock.now += 1500
    grant = backend.acquire(lim, "p1")
    clock.now += 100
    transition = backend.record(lim, grant.epoch, "p1", "failure")
    assert transition is not None
    assert (transition.from_state, transition.to_state, transition.reason) == (
        "half_open", "open", "probe_failed")
    snap = backend.snapshot(lim)
    assert snap.opened_at_ms == clock.now
    assert snap.open_until_ms == clock.now + 2000  # the first failed probe doubles the open time
    assert snap.failed_probes == 1


def open_periods(backend: LocalBackend, clock: Clock, lim: Limits, probes: int) -> list[int]:
    """Trip, then fail `probes` probes, each once the open period is over; the open periods."""
    trip(backend, lim)
    periods = []
    for _ in range(probes):
        snap = backend.snapshot(lim)
        assert snap.open_until_ms is not None and snap.opened_at_ms is not None
        periods.append(snap.open_until_ms - snap.opened_at_ms)
        clock.now = snap.open_until_ms
        grant = backend.acquire(lim, "p")
        assert grant.probe
        backend.record(lim, grant.epoch, "p", "failure")
    snap = backend.snapshot(lim)
    assert snap.open_until_ms is not None and snap.opened_at_ms is not None
    return [*periods, snap.open_until_ms - snap.opened_at_ms]


def test_each_failed_probe_doubles_the_open_time_up_to_four_resets(backend: LocalBackend,
                                                                    clock: Clock) -> None:
    lim = limits()
    assert (lim.reset_factor, lim.max_reset_ms) == (2.0, 4000)
    assert open_periods(backend, clock, lim, 4) == [1000, 2000, 4000, 4000, 4000]
    assert backend.snapshot(lim).failed_probes == 4


def test_factor_and_cap_come_from_the_config(backend: LocalBackend, clock: Clock) -> None:
    lim = limits(replace(CONFIG, reset_backoff_factor=1.5, max_reset_timeout_ms=3000))
    assert open_periods(backend, clock, lim, 4) == [1000, 1500, 2250, 3000, 3000]


def test_factor_one_keeps_the_open_time_fixed(backend: LocalBackend, clock: Clock) -> None:
    lim = limits(replace(CONFIG, reset_backoff_factor=1.0))
    assert open_periods(backend, clock, lim, 3) == [1000] * 4
    assert backend.snapshot(lim).failed_probes == 3


def test_a_successful_probe_resets_the_streak(backend: LocalBackend, clock: Clock) -> None:
    lim = limits()
    open_periods(backend, clock, lim, 2)
    clock.now += 4000
    grant = backend.acquire(lim, "p")
    backend.record(lim, grant.epoch, "p", "success")
    assert backend.snapshot(lim).failed_probes == 0
    assert open_periods(backend, clock, lim, 1) == [1000, 2000]


def test_force_close_resets_the_streak_and_force_open_keeps_it(backend: LocalBackend,
                                                               clock: Clock) -> None:
    lim = limits()
    open_periods(backend, clock, lim, 1)
    backend.force(lim, "open", 0, "forced: test")
    assert backend.snapshot(lim).failed_probes == 1
    grant = backend.acquire(lim, "p")
    backend.record(lim, grant.epoch, "p", "failure")
    snap = backend.snapshot(lim)
    assert (snap.failed_probes, snap.open_until_ms) == (2, clock.now + 4000)
    backend.force(lim, "close", 0, "forced: healthy")
    assert backend.snapshot(lim).failed_probes == 0
    assert open_periods(backend, clock, lim, 0) == [1000]


def test_open_ms_caps_a_power_that_overflows() -> None:
    lim = limits(replace(CONFIG, reset_backoff_factor=100.0, max_reset_timeout_ms=604_800_000))
    assert lim.open_ms(0) == 1000
    assert lim.open_ms(3) == 604_800_000  # 10^9 ms, over the cap
    assert lim.open_ms(10_000) == 604_800_000  # 100.0 ** 10000 raises OverflowError in Python


@given(reset=st.integers(0, 10**7), factor=st.floats(1.0, 100.0),
       extra=st.integers(0, 10**8), streak=st.integers(0, 400))
def test_open_ms_stays_between_reset_and_cap_and_never_shrinks(
        reset: int, factor: float, extra: int, streak: int) -> None:
    lim = limits(replace(CONFIG, reset_timeout_ms=reset, reset_backoff_factor=factor,
                         max_reset_timeout_ms=reset + extra))
    assert reset <= lim.open_ms(streak) <= reset + extra
    assert lim.open_ms(streak) <= lim.open_ms(streak + 1)
    if factor == 1.0:
        assert lim.open_ms(streak) == reset


def test_a_neutral_probe_frees_its_slot_only(backend: LocalBackend, clock: Clock) -> None:
    lim = limits()
    trip(backend, lim)
    clock.now += 1000
    grant = backend.acquire(lim, "p1")
    assert backend.record(lim, grant.epoch, "p1", "neutral") is None
    assert backend.snapshot(lim).state == "half_open"
    assert backend.acquire(lim, "p2").probe


def test_an_expired_lease_frees_its_slot(backend: LocalBackend, clock: Clock) -> None:
    lim = limits()
    trip(backend, lim)
    clock.now += 1000
    assert backend.acquire(lim, "p1").probe
    assert not backend.acquire(lim, "p2").granted
    clock.now += 500
    assert backend.acquire(lim, "p2").probe
    assert backend.snapshot(lim).probes_in_flight == 1


def test_records_from_an_older_epoch_are_ignored(backend: LocalBackend, clock: Clock) -> None:
    lim = limits()
    stale = backend.acquire(lim, "t").epoch
    trip(backend, lim)
    clock.now += 1000
    probe = backend.acquire(lim, "p1")
    backend.record(lim, probe.epoch, "p1", "success")
    assert backend.record(lim, stale, "", "failure") is None
    assert backend.snapshot(lim).consecutive_failures == 0


def test_force_open_and_close(backend: LocalBackend, clock: Clock) -> None:
    lim = limits()
    opened = backend.force(lim, "open", 5000, "forced: maintenance")
    assert opened is not None and opened.to_state == "open"
    assert backend.acquire(lim, "t").wait_s == pytest.approx(5.0)
    assert backend.force(lim, "open", 5000, "forced: again") is None
    closed = backend.force(lim, "close", 0, "forced: healthy")
    assert closed is not None and (closed.from_state, closed.to_state) == ("open", "closed")
    assert backend.acquire(lim, "t").granted


# --- ClusterBreaker without Redis -------------------------------------------------------


def local_breaker(config: BreakerConfig = CONFIG, **kwargs: Any) -> ClusterBreaker:
    return ClusterBreaker(None, f"api-{uuid.uuid4().hex[:8]}", config,
                          key_prefix="unit:", **kwargs)


def test_without_redis_the_breaker_is_local_and_trips() -> None:
    events: list[tuple[str, str, str, str, datetime]] = []
    breaker = local_breaker(listeners=[lambda *event: events.append(event)])
    for _ in range(3):
        breaker.record(breaker.acquire(), success=False)
    with pytest.raises(BreakerOpenError) as refused:
        breaker.acquire()
    assert refused.value.integration == breaker.integration
    assert 0 < refused.value.retry_after_s <= 1.0
    assert str(refused.value).startswith(f"Circuit breaker for '{breaker.integration}' is open;")
    assert [(e[1], e[2]) for e in events] == [("closed", "open")]
    snap = breaker.snapshot()
    assert (snap.state, snap.backend, snap.consecutive_failures) == ("open", "local", 3)
    assert snap.time_to_half_open_s is not None and 0 < snap.time_to_half_open_s <= 1.0
    assert (snap.failed_probes, snap.open_ms) == (0, 1000)


def test_breakers_of_one_key_share_state_in_the_process() -> None:
    first = local_breaker()
    second = ClusterBreaker(None, first.integration, CONFIG, key_prefix="unit:")
    first.force_open("test")
    with pytest.raises(BreakerOpenError):
        second.acquire()


def test_a_disabled_breaker_always_grants() -> None:
    breaker = local_breaker(replace(CONFIG, enabled=False, threshold=0))
    for _ in range(10):
        permit = breaker.acquire()
        assert permit == Permit(breaker.integration, probe=False, token=None)
        breaker.record(permit, success=False)
    breaker.force_open("ignored")
    assert breaker.snapshot().state == "disabled"


def test_force_open_for_zero_seconds_lets_the_next_call_probe() -> None:
    events: list[tuple[Any, ...]] = []
    breaker = local_breaker(listeners=[lambda *event: events.append(event)])
    breaker.force_open("health check failed", duration_s=0)
    permit = breaker.acquire()
    assert permit.probe
    breaker.record(permit, success=True)
    assert [(e[1], e[2], e[3]) for e in events] == [
        ("closed", "open", "forced: health check failed"),
        ("open", "half_open", "reset_timeout_elapsed"),
        ("half_open", "closed", "probe_succeeded"),
    ]


def test_bad_settings_are_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match=r"half_open_max_calls must be at least 1, got 0"):
        local_breaker(replace(CONFIG, half_open_max_calls=0))
    with pytest.raises(ValueError, match=r"failure_rate must be above 0 and at most 1"):
        local_breaker(replace(CONFIG, failure_rate=1.5))
    with pytest.raises(ValueError, match=r"reset_backoff_factor must be a finite number of at "
                                         r"least 1, got 0.5"):
        local_breaker(replace(CONFIG, reset_backoff_factor=0.5))
    with pytest.raises(ValueError, match=r"max_reset_timeout_ms must be at least "
                                         r"reset_timeout_ms \(1000\), got 999"):
        local_breaker(replace(CONFIG, max_reset_timeout_ms=999))


def test_the_refusal_survives_pickling_and_is_a_pybreaker_error() -> None:
    error = BreakerOpenError("crm", 1.84)
    assert str(error) == "Circuit breaker for 'crm' is open; next probe allowed in 1.8 s."
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.integration, copy.retry_after_s, str(copy)) == ("crm", 1.84, str(error))
    assert isinstance(error, pybreaker.CircuitBreakerError)


# --- pybreaker face -----------------------------------------------------------------------


class Recorder(pybreaker.CircuitBreakerListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.events.append(("before", cb.name))

    def success(self, cb: Any) -> None:
        self.events.append(("success",))

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.events.append(("failure", type(exc).__name__))

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.events.append(("state", old_state.name, new_state.name))


def boom() -> None:
    raise ConnectionError("upstream down")


def test_call_runs_pybreaker_listeners_and_reraises() -> None:
    recorder = Recorder()
    breaker = local_breaker(replace(CONFIG, threshold=2), listeners=[recorder])
    assert breaker.call(lambda x: x * 2, 21) == 42
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(boom)
    assert recorder.events == [
        ("before", breaker.integration), ("success",),
        ("before", breaker.integration), ("failure", "ConnectionError"),
        ("before", breaker.integration), ("state", "closed", "open"),
        ("failure", "ConnectionError"),
    ]


def test_excluded_exceptions_do_not_count() -> None:
    breaker = local_breaker(replace(CONFIG, threshold=1),
                            exclude=[KeyError, lambda exc: "client" in str(exc)])
    for error in (KeyError("missing"), ValueError("client error 404")):
        with pytest.raises(type(error)):
            breaker.call(_raiser(error))
    assert breaker.snapshot().state == "closed"
    with pytest.raises(ValueError):
        breaker.call(_raiser(ValueError("server error")))
    assert breaker.snapshot().state == "open"


def _raiser(error: Exception) -> Any:
    def raise_it() -> None:
        raise error

    return raise_it


def test_the_decorator_guards_the_function() -> None:
    breaker = local_breaker(replace(CONFIG, threshold=1))

    @breaker
    def flaky(fail_now: bool) -> str:
        if fail_now:
            raise TimeoutError("slow")
        return "ok"

    assert flaky(False) == "ok"
    with pytest.raises(TimeoutError):
        flaky(True)
    with pytest.raises(BreakerOpenError):
        flaky(False)


def test_no_lock_is_held_across_the_call() -> None:
    """Two calls must be inside the guarded function at once; with a lock the barrier breaks."""
    breaker = local_breaker()
    barrier = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            breaker.call(barrier.wait)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_failing_listener_does_not_break_the_job() -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("listener bug")

    breaker = local_breaker(replace(CONFIG, threshold=1), listeners=[broken])
    breaker.record(breaker.acquire(), success=False)
    assert breaker.snapshot().state == "open"
