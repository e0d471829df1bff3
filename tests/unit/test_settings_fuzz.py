"""Fuzz the numeric and boolean settings: a bad value is always a SettingsError naming it."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.config.settings import MAX_COUNT, MAX_MS, SettingsError, load_settings

COUNTS = ["CIRCUIT_BREAKER_THRESHOLD", "MAX_RETRIES", "DLQ_MAX_RETRIES", "RATE_LIMIT_MAX_REQUESTS",
          "POISON_MAX_DELIVERIES"]
MILLIS = [
    "API_TIMEOUT", "CIRCUIT_BREAKER_TIMEOUT", "CIRCUIT_BREAKER_RESET_TIMEOUT", "RETRY_DELAY",
    "RETRY_MAX_DELAY", "DLQ_RETRY_DELAY", "HEALTH_CHECK_INTERVAL", "HEALTH_CHECK_TIMEOUT",
    "RATE_LIMIT_WINDOW", "MAX_DEFER_WINDOW",
]
WHOLE = [*COUNTS, *MILLIS, "REDIS_VISIBILITY_TIMEOUT"]
FACTOR = "RETRY_BACKOFF_FACTOR"
NUMERIC = [*WHOLE, FACTOR]
FLAGS = ["DLQ_ENABLED", "METRICS_ENABLED", "ENABLE_CIRCUIT_BREAKER",
         "ENABLE_GRACEFUL_DEGRADATION", "ENABLE_AUTO_RECOVERY"]
LIMITS = {**dict.fromkeys(COUNTS, MAX_COUNT), **dict.fromkeys(MILLIS, MAX_MS),
          "REDIS_VISIBILITY_TIMEOUT": MAX_MS // 1000, FACTOR: 100}

SPACE = " \t\r\n\f\v"
LOOKS_WHOLE = re.compile(r"[ \t\r\n\f\v]*[+-]?[0-9]+[ \t\r\n\f\v]*")
LOOKS_DECIMAL = re.compile(
    r"[ \t\r\n\f\v]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[ \t\r\n\f\v]*"
)


def assert_refused(name: str, value: str) -> None:
    """Loading must raise SettingsError (and nothing else) with a message naming `name`."""
    try:
        load_settings({name: value})
    except SettingsError as error:
        assert re.search(rf"\b{name}\b", str(error)), str(error)
    else:
        raise AssertionError(f"{name}={value!r} was accepted")


def garbage_for(name: str) -> st.SearchStrategy[str]:
    pattern = LOOKS_DECIMAL if name == FACTOR else LOOKS_WHOLE
    return st.text(max_size=40).filter(lambda text: not pattern.fullmatch(text))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(NUMERIC).flatmap(lambda name: st.tuples(st.just(name), garbage_for(name))))
def test_garbage_is_refused(case: tuple[str, str]) -> None:
    assert_refused(*case)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NUMERIC), st.integers(max_value=-1), st.sampled_from(["", " ", "\t"]))
def test_negative_values_are_refused(name: str, value: int, pad: str) -> None:
    assert_refused(name, f"{pad}{value}{pad}")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NUMERIC), st.integers(min_value=1, max_value=10**400), st.booleans())
def test_absurd_values_are_refused(name: str, excess: int, plus: bool) -> None:
    assert_refused(name, f"{'+' if plus else ''}{LIMITS[name] + excess}")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FLAGS), st.text(max_size=20))
def test_booleans_accept_only_the_known_words(name: str, value: str) -> None:
    if value.strip(SPACE).lower() in {"true", "false", "1", "0", "yes", "no"}:
        assert isinstance(getattr(load_settings({name: value}), name.lower()), bool)
    else:
        assert_refused(name, value)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(NUMERIC),
    st.one_of(st.text(max_size=30), st.from_regex(LOOKS_DECIMAL, fullmatch=True)),
)
def test_any_text_is_either_a_valid_setting_or_a_settings_error(name: str, value: str) -> None:
    try:
        load_settings({name: value})
    except SettingsError as error:
        assert re.search(rf"\b{name}\b", str(error)), str(error)
    else:
        number = float(value.strip(SPACE))
        assert 0 <= number <= LIMITS[name]
