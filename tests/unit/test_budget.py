"""The retry budget's rules, on the in-process budget with a clock the tests move."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recovery.state.budget import (
    LocalRetryBudget,
    RetryBudget,
    RetryBudgetConfig,
    spread_deferral,
    wait_for_room_ms,
)

START_MS = 1_000_000.0


class Clock:
    def __init__(self, now_ms: float = START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms

    def advance(self, ms: float) -> None:
        self.now_ms += ms


def budget(clock: Clock) -> LocalRetryBudget:
    return LocalRetryBudget(clock_ms=clock)


def test_defaults_are_a_fifth_of_first_attempts_plus_three_in_ten_seconds() -> None:
    config = RetryBudgetConfig()
    assert (config.ratio, config.floor, config.window_ms, config.enabled) == (0.2, 3, 10_000, True)
    assert config.slot_ms == 1000
    assert [config.allowance(n) for n in (0, 4, 5, 10, 500)] == [3, 3, 4, 5, 103]


def test_allowance_is_not_lost_to_floating_point() -> None:
    assert 0.29 * 100 < 29  # what the allowance must not truncate to 28
    assert RetryBudgetConfig(ratio=0.29, floor=0).allowance(100) == 29
    assert RetryBudgetConfig(ratio=0.57, floor=1).allowance(100) == 58


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"ratio": -0.1}, "ratio must be a number from 0 to 10"),
        ({"ratio": math.nan}, "ratio must be a number"),
        ({"ratio": True}, "ratio must be a number"),
        ({"ratio": "0.2"}, "ratio must be a number"),
        ({"floor": -1}, "floor must be a whole number"),
        ({"floor": 1.5}, "floor must be a whole number"),
        ({"window_ms": 99}, "window must be a whole number of milliseconds from 100"),
        ({"window_ms": 3_600_001}, "window must be"),
    ],
)
def test_bad_settings_are_refused_with_a_sentence(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        RetryBudgetConfig(**kwargs)  # type: ignore[arg-type]


def test_without_first_attempts_only_the_floor_is_allowed() -> None:
    clock = Clock()
    local = budget(clock)
    config = RetryBudgetConfig(floor=3)
    assert [local.try_charge_retry("api", config) for _ in range(3)] == [0.0] * 3
    assert local.try_charge_retry("api", config) == pytest.approx(10.0)
    clock.advance(9_999)
    assert local.try_charge_retry("api", config) == pytest.approx(0.001)
    clock.advance(1)
    assert local.try_charge_retry("api", config) == 0.0


def test_first_attempts_raise_the_allowance() -> None:
    clock = Clock()
    local = budget(clock)
    config = RetryBudgetConfig(ratio=0.2, floor=3)
    for _ in range(10):
        local.note_first_attempt("api", config)
    granted = sum(1 for _ in range(20) if local.try_charge_retry("api", config) == 0.0)
    assert granted == 5
    assert local.usage("api", config) == {
        "first_attempts": 10, "retries": 5, "allowed": 5, "window_ms": 10_000,
    }


def test_a_refused_retry_charges_nothing() -> None:
    local = budget(Clock())
    config = RetryBudgetConfig(floor=1)
    assert local.try_charge_retry("api", config) == 0.0
    for _ in range(5):
        assert local.try_charge_retry("api", config) > 0
    assert local.usage("api", config)["retries"] == 1


def test_integrations_have_separate_budgets() -> None:
    local = budget(Clock())
    config = RetryBudgetConfig(floor=1)
    assert local.try_charge_retry("a", config) == 0.0
    assert local.try_charge_retry("b", config) == 0.0
    assert local.try_charge_retry("a", config) > 0


def test_the_wait_counts_first_attempts_that_age_out_too() -> None:
    """Ten first attempts at 0 s allow 5 retries; they are charged at 5 s. At 6 s the next
    retry must wait until the 5 s slot leaves the window (15 s), not until 10 s, when the
    first attempts leave and the allowance falls back to the floor of 3."""
    clock = Clock()
    local = budget(clock)
    config = RetryBudgetConfig(ratio=0.2, floor=3)
    for _ in range(10):
        local.note_first_attempt("api", config)
    clock.advance(5_000)
    assert [local.try_charge_retry("api", config) for _ in range(5)] == [0.0] * 5
    clock.advance(1_000)
    assert local.try_charge_retry("api", config) == pytest.approx(9.0)
    clock.advance(4_000)  # 10 s: the first attempts are gone, the 5 retries still count
    assert local.try_charge_retry("api", config) == pytest.approx(5.0)


def test_room_is_judged_by_the_first_attempts_left_when_retries_leave() -> None:
    """At 10 s the first retries leave, but so do the first attempts that paid for them: the
    allowance falls to the floor, and room only comes when the 5 s retries leave too."""
    clock = Clock()
    local = budget(clock)
    config = RetryBudgetConfig(ratio=1.0, floor=1)
    for _ in range(3):
        local.note_first_attempt("api", config)
    assert [local.try_charge_retry("api", config) for _ in range(2)] == [0.0] * 2
    clock.advance(5_000)
    assert [local.try_charge_retry("api", config) for _ in range(2)] == [0.0] * 2
    clock.advance(1_000)
    assert local.try_charge_retry("api", config) == pytest.approx(9.0)


def test_the_wait_is_the_oldest_retry_slot_that_frees_enough() -> None:
    firsts: dict[float, int] = {}
    retries = {0.0: 1, 1000.0: 2, 2000.0: 1}
    config = RetryBudgetConfig(ratio=0.0, floor=2, window_ms=10_000)
    # 4 retries, room for 2: one more fits once 3 have left, i.e. when the 1 s slot leaves.
    assert wait_for_room_ms(firsts, retries, 2500.0, config) == 8500.0


def test_with_no_floor_and_no_first_attempts_it_waits_a_whole_window() -> None:
    local = budget(Clock())
    config = RetryBudgetConfig(ratio=0.5, floor=0, window_ms=2000)
    assert local.try_charge_retry("api", config) == 2.0


def test_a_disabled_budget_lets_every_retry_through_and_counts_nothing() -> None:
    local = LocalRetryBudget(clock_ms=Clock())
    shared = RetryBudget(None, key_prefix="unit:", local=local)
    config = RetryBudgetConfig(floor=0, ratio=0.0, enabled=False)
    shared.note_first_attempt("api", config)
    assert [shared.try_charge_retry("api", config) for _ in range(50)] == [0.0] * 50
    assert local.usage("api", config)["first_attempts"] == 0


def test_without_redis_the_budget_is_the_in_process_one() -> None:
    local = LocalRetryBudget(clock_ms=Clock())
    shared = RetryBudget(None, key_prefix="unit:", local=local)
    config = RetryBudgetConfig(floor=2)
    shared.note_first_attempt("api", config)
    assert shared.try_charge_retry("api", config) == 0.0
    assert shared.usage("api", config) == local.usage("api", config)
    assert local.usage("api", config)["retries"] == 1


def test_refused_retries_are_spread_over_the_next_window() -> None:
    config = RetryBudgetConfig(window_ms=10_000)
    rng = random.Random(7)
    delays = [spread_deferral(2.5, config, rng) for _ in range(200)]
    assert all(2.5 <= d <= 12.5 for d in delays)
    assert max(delays) - min(delays) > 8  # not a herd
    assert spread_deferral(-1.0, config, random.Random(1)) >= 0.0


# --- property: the budget holds, and the wait it names is exact --------------------------------


def _reference_room(events: list[tuple[float, str]], at: float, config: RetryBudgetConfig
                    ) -> bool:
    """Independent statement of the rule: events count while their slot is in the window."""

    def live(kind: str) -> int:
        slot = config.slot_ms
        return sum(1 for t, k in events if k == kind and math.floor(t / slot) * slot > at -
                   config.window_ms)

    return live("retry") + 1 <= config.allowance(live("first"))


operations = st.lists(
    st.tuples(st.sampled_from(["first", "retry"]), st.one_of(st.just(0), st.integers(0, 400))),
    max_size=60,
)


@given(
    ops=operations,
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    floor=st.integers(0, 4),
    window_ms=st.sampled_from([100, 250, 1000]),
)
def test_retries_never_exceed_the_allowance_and_the_wait_is_exact(
    ops: list[tuple[str, int]], ratio: float, floor: int, window_ms: int
) -> None:
    config = RetryBudgetConfig(ratio=ratio, floor=floor, window_ms=window_ms)
    clock = Clock()
    local = budget(clock)
    events: list[tuple[float, str]] = []
    for kind, gap_ms in ops:
        clock.advance(gap_ms)
        if kind == "first":
            local.note_first_attempt("api", config)
            events.append((clock.now_ms, "first"))
            continue
        expected = _reference_room(events, clock.now_ms, config)
        wait_s = local.try_charge_retry("api", config)
        assert (wait_s == 0.0) is expected
        if expected:
            events.append((clock.now_ms, "retry"))
            continue
        wait_ms = round(wait_s * 1000)
        if wait_ms < window_ms:  # a wait shorter than a window promises room then
            assert _reference_room(events, clock.now_ms + wait_ms, config)
        # Room only changes when a slot leaves the window: none of those moments before the
        # promised one may have room.
        slot = config.slot_ms
        changes = {math.floor(t / slot) * slot + window_ms for t, _ in events}
        earlier = [at for at in changes if clock.now_ms < at < clock.now_ms + wait_ms]
        assert not any(_reference_room(events, at, config) for at in earlier)
