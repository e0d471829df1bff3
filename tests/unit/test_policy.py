"""Tests for the retry policy in recovery.core.policy."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from recovery.config.registry import (
    BreakerConfig,
    Integration,
    RateLimitConfig,
    RetryConfig,
)
from recovery.core.errors import Classification, ResponseTooLargeError, classify
from recovery.core.policy import (
    Decision,
    backoff_delay,
    cap_retry_after,
    decide_after_failure,
    decide_when_blocked,
    end_status,
)


def retry_config(
    max_attempts: int = 3,
    initial_delay_ms: int = 1000,
    backoff_factor: float = 2.0,
    max_delay_ms: int = 30_000,
    jitter: float = 0.0,
) -> RetryConfig:
    return RetryConfig(
        max_attempts=max_attempts,
        initial_delay_ms=initial_delay_ms,
        backoff_factor=backoff_factor,
        max_delay_ms=max_delay_ms,
        jitter=jitter,
    )


def integration(retry: RetryConfig | None = None) -> Integration:
    return Integration(
        id="payments",
        name="Payments API",
        base_url="https://payments.example.com",
        timeout_ms=5000,
        retry=retry or retry_config(),
        circuit_breaker=BreakerConfig(
            enabled=True, threshold=5, reset_timeout_ms=30_000, call_timeout_ms=60_000
        ),
        fallbacks=(),
        health_check=None,
        rate_limit=RateLimitConfig(window_ms=60_000, max_requests=100),
        headers={},
        oauth=None,
    )


def status(code: int, headers: Mapping[str, str] | None = None) -> Classification:
    response = requests.Response()
    response.status_code = code
    response.headers.update(headers or {})
    return classify(response=response)


def decide(
    c: Classification,
    attempt: int,
    *,
    max_attempts: int = 3,
    max_countdown_s: float = 3000.0,
    has_fallback: bool = False,
    dlq_enabled: bool = True,
    **retry: Any,
) -> Decision:
    return decide_after_failure(
        c,
        attempt,
        integration(retry_config(max_attempts=max_attempts, **retry)),
        max_countdown_s=max_countdown_s,
        has_fallback=has_fallback,
        dlq_enabled=dlq_enabled,
    )


# --- backoff_delay ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "seconds"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]
)
def test_backoff_grows_exponentially_up_to_the_cap(attempt: int, seconds: float) -> None:
    assert backoff_delay(retry_config(), attempt) == pytest.approx(seconds)


def test_backoff_survives_huge_attempt_numbers() -> None:
    assert backoff_delay(retry_config(backoff_factor=2.0), 10_000) == pytest.approx(30.0)
    assert backoff_delay(retry_config(backoff_factor=3.5), 10_000) == pytest.approx(30.0)


def test_backoff_initial_delay_above_cap_is_capped() -> None:
    assert backoff_delay(retry_config(initial_delay_ms=90_000), 1) == pytest.approx(30.0)


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_delay(retry_config(), 0)


def test_backoff_jitter_stays_in_its_band_and_varies() -> None:
    rng = random.Random(7)
    draws = [backoff_delay(retry_config(jitter=0.5), 3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in draws)
    assert len(set(draws)) > 100


def test_backoff_jitter_is_reproducible_with_a_seeded_rng() -> None:
    config = retry_config(jitter=0.3)
    same_seed = {backoff_delay(config, 4, random.Random(42)) for _ in range(3)}
    assert len(same_seed) == 1
    assert backoff_delay(config, 4, random.Random(43)) not in same_seed


def test_backoff_full_jitter_can_reach_down_to_zero() -> None:
    rng = random.Random(1)
    draws = [backoff_delay(retry_config(jitter=1.0), 2, rng) for _ in range(500)]
    assert min(draws) < 0.1
    assert max(draws) <= 2.0


@given(
    initial=st.integers(min_value=0, max_value=100_000),
    factor=st.floats(min_value=1.0, max_value=10.0),
    cap=st.integers(min_value=0, max_value=10_000_000),
    attempt=st.integers(min_value=1, max_value=300),
)
def test_backoff_without_jitter_is_monotone_capped_and_non_negative(
    initial: int, factor: float, cap: int, attempt: int
) -> None:
    config = retry_config(initial_delay_ms=initial, backoff_factor=factor, max_delay_ms=cap)
    here = backoff_delay(config, attempt)
    following = backoff_delay(config, attempt + 1)
    assert 0.0 <= here <= following <= cap / 1000


@given(
    initial=st.integers(min_value=0, max_value=100_000),
    factor=st.floats(min_value=1.0, max_value=10.0),
    cap=st.integers(min_value=0, max_value=10_000_000),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    attempt=st.integers(min_value=1, max_value=300),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_jitter_stays_between_the_lowered_and_the_plain_delay(
    initial: int, factor: float, cap: int, jitter: float, attempt: int, seed: int
) -> None:
    plain = backoff_delay(
        retry_config(initial_delay_ms=initial, backoff_factor=factor, max_delay_ms=cap), attempt
    )
    jittered = backoff_delay(
        retry_config(
            initial_delay_ms=initial, backoff_factor=factor, max_delay_ms=cap, jitter=jitter
        ),
        attempt,
        random.Random(seed),
    )
    assert plain * (1 - jitter) - 1e-9 <= jittered <= plain + 1e-9
    assert 0.0 <= jittered <= cap / 1000


# --- decide_after_failure: the decision table -------------------------------------------------


@pytest.mark.parametrize(
    ("c", "attempt", "options", "action", "delay", "source", "strategy"),
    [
        # retryable with attempts left: backoff
        (status(503), 1, {}, "retry", 1.0, "backoff", "server-error-circuit"),
        (status(503), 2, {}, "retry", 2.0, "backoff", "server-error-circuit"),
        (status(502), 1, {}, "retry", 1.0, "backoff", "server-error-circuit"),
        (status(408), 1, {}, "retry", 1.0, "backoff", "network-retry"),
        (classify(ConnectionResetError()), 1, {}, "retry", 1.0, "backoff", "network-retry"),
        # rate-limit-backoff has its own numbers (5 attempts, 5 s, factor 3: the design table)
        (status(429), 1, {}, "retry", 5.0, "backoff", "rate-limit-backoff"),
        (status(429), 2, {}, "retry", 15.0, "backoff", "rate-limit-backoff"),
        (status(429), 4, {}, "retry", 135.0, "backoff", "rate-limit-backoff"),
        (status(429), 5, {}, "dead_letter", None, None, "dead-letter-queue"),
        # Retry-After longer than the backoff wins; shorter keeps the backoff
        (status(429, {"Retry-After": "10"}), 1, {}, "retry", 10.0, "retry-after",
         "rate-limit-backoff"),
        (status(503, {"Retry-After": "1"}), 2, {}, "retry", 2.0, "retry-after",
         "server-error-circuit"),
        # every delay is capped by the broker's limit
        (status(429, {"Retry-After": "86400"}), 1, {"max_countdown_s": 600.0}, "retry", 600.0,
         "retry-after", "rate-limit-backoff"),
        (status(500), 2, {"max_countdown_s": 0.5}, "retry", 0.5, "backoff",
         "server-error-circuit"),
        # attempts exhausted
        (status(503), 3, {"has_fallback": True}, "fallback", None, None, "server-error-circuit"),
        (status(503), 3, {}, "dead_letter", None, None, "dead-letter-queue"),
        (status(503), 3, {"dlq_enabled": False}, "fail", None, None, "server-error-circuit"),
        (status(503), 7, {}, "dead_letter", None, None, "dead-letter-queue"),
        (status(503), 1, {"max_attempts": 1}, "dead_letter", None, None, "dead-letter-queue"),
        # not retryable
        (status(400), 1, {}, "dead_letter", None, None, "dead-letter-queue"),
        (status(400), 1, {"has_fallback": True}, "dead_letter", None, None, "dead-letter-queue"),
        (status(404), 1, {"has_fallback": True, "dlq_enabled": False}, "fail", None, None,
         "dead-letter-queue"),
        (status(401), 1, {"has_fallback": True}, "fallback", None, None, "auth-token-refresh"),
        (status(401), 1, {}, "dead_letter", None, None, "dead-letter-queue"),
        (status(403), 1, {"dlq_enabled": False}, "fail", None, None, "auth-token-refresh"),
        # unknown goes to the dead-letter queue at once (the design table), fallbacks or not
        (classify(Exception("boom")), 1, {"has_fallback": True}, "dead_letter", None, None,
         "dead-letter-queue"),
        (classify(Exception("boom")), 1, {"has_fallback": True, "dlq_enabled": False}, "fail",
         None, None, "dead-letter-queue"),
        (classify(Exception("boom")), 1, {}, "dead_letter", None, None, "dead-letter-queue"),
    ],
)
def test_decision_table(
    c: Classification,
    attempt: int,
    options: dict[str, Any],
    action: str,
    delay: float | None,
    source: str | None,
    strategy: str,
) -> None:
    decision = decide(c, attempt, **options)
    assert decision.action == action
    assert decision.delay_source == source
    assert decision.strategy == strategy
    if delay is None:
        assert decision.delay_s is None
    else:
        assert decision.delay_s == pytest.approx(delay)


def test_retry_reason_is_a_readable_sentence() -> None:
    decision = decide(status(503), 2)
    assert decision.reason == "HTTP 503 Service Unavailable on attempt 2 of 3; retrying in 2.0 s."


def test_exhausted_reason_says_so_and_names_the_outcome() -> None:
    reason = decide(status(502), 3).reason
    assert reason.startswith("HTTP 502 Bad Gateway on attempt 3 of 3; no attempts are left")
    assert "dead-letter queue" in reason


def test_client_error_reason_explains_why_fallbacks_are_skipped() -> None:
    reason = decide(status(422), 1, has_fallback=True, dlq_enabled=False).reason
    assert "not retryable (client_error)" in reason
    assert "fallbacks cannot repair a client error" in reason
    assert "job fails" in reason


def test_retry_uses_the_given_rng_for_jitter() -> None:
    config = integration(retry_config(jitter=1.0, max_attempts=5))
    delays = {
        decide_after_failure(
            status(500), 3, config, max_countdown_s=60, has_fallback=False, dlq_enabled=True,
            rng=random.Random(seed),
        ).delay_s
        for seed in range(20)
    }
    assert len(delays) > 1
    assert all(d is not None and 0 <= d <= 4.0 for d in delays)


@pytest.mark.parametrize(("attempt", "countdown"), [(0, 10.0), (1, -1.0)])
def test_decide_after_failure_rejects_bad_arguments(attempt: int, countdown: float) -> None:
    with pytest.raises(ValueError):
        decide(status(500), attempt, max_countdown_s=countdown)


@given(
    code=st.integers(min_value=400, max_value=599),
    retry_after=st.none() | st.integers(min_value=0, max_value=10**7).map(str),
    attempt=st.integers(min_value=1, max_value=10),
    max_attempts=st.integers(min_value=1, max_value=10),
    countdown=st.floats(min_value=0.0, max_value=10_000.0),
    has_fallback=st.booleans(),
    dlq_enabled=st.booleans(),
)
def test_decisions_hold_their_invariants(
    code: int,
    retry_after: str | None,
    attempt: int,
    max_attempts: int,
    countdown: float,
    has_fallback: bool,
    dlq_enabled: bool,
) -> None:
    c = status(code, {"Retry-After": retry_after} if retry_after is not None else None)
    decision = decide(
        c, attempt, max_attempts=max_attempts, max_countdown_s=countdown,
        has_fallback=has_fallback, dlq_enabled=dlq_enabled, jitter=0.5,
    )
    # rate-limit-backoff has 5 attempts of its own (429 and 425 Too Early are rate limits)
    allowed = 5 if c.strategy == "rate-limit-backoff" else max_attempts
    assert (decision.action == "retry") == (c.retryable and attempt < allowed)
    if decision.action == "retry":
        assert decision.delay_s is not None
        assert 0.0 <= decision.delay_s <= countdown
    else:
        assert decision.delay_s is None
        assert decision.action != "defer"
        assert decision.action != "fallback" or has_fallback
        assert decision.action != "dead_letter" or dlq_enabled
    assert decision.reason.endswith(".")


# --- decide_when_blocked ----------------------------------------------------------------------


def blocked(
    until_s: float,
    blocked_since_s: float = 0.0,
    *,
    source: str = "breaker",
    has_fallback: bool = False,
    dlq_enabled: bool = True,
) -> Decision:
    return decide_when_blocked(
        until_s,
        blocked_since_s,
        max_defer_s=600.0,
        source=source,  # type: ignore[arg-type]
        has_fallback=has_fallback,
        dlq_enabled=dlq_enabled,
    )


def test_open_breaker_defers_for_its_remaining_time() -> None:
    decision = blocked(12.0, 30.0)
    assert decision == Decision(
        action="defer",
        delay_s=12.0,
        delay_source="breaker",
        strategy="server-error-circuit",
        reason=(
            "The circuit breaker is open for another 12.0 s; deferring without spending an "
            "attempt (42.0 s of the 600.0 s defer window)."
        ),
    )


def test_full_rate_limit_defers_with_its_own_source() -> None:
    decision = blocked(5.0, source="rate-limit")
    assert decision.action == "defer"
    assert decision.delay_source == "rate-limit"
    assert decision.strategy == "rate-limit-backoff"
    assert decision.reason.startswith("The rate limit is exhausted for another 5.0 s")


@pytest.mark.parametrize(
    ("c", "options", "action", "final"),
    [
        (status(503), {"has_fallback": True}, "fallback", "dead"),
        (status(503), {"has_fallback": True, "dlq_enabled": False}, "fallback", "failed"),
        (status(503), {}, "dead_letter", "dead"),
        (status(503), {"dlq_enabled": False}, "fail", "failed"),
        (status(400), {"has_fallback": True}, "dead_letter", "dead"),
        (classify(Exception("boom")), {"dlq_enabled": False}, "fail", "failed"),
    ],
)
def test_a_decision_that_ends_the_job_names_its_final_status(
        c: Classification, options: dict[str, Any], action: str, final: str) -> None:
    """The policy decides `dead` or `failed` once; the pipeline only reads `final`."""
    decision = decide(c, 3, **options)
    assert (decision.action, decision.final) == (action, final)


@pytest.mark.parametrize(
    ("options", "action", "final"),
    [({}, "defer", None), ({"has_fallback": True}, "defer", None)],
)
def test_a_decision_that_does_not_end_the_job_has_no_final_status(
        options: dict[str, Any], action: str, final: str | None) -> None:
    assert decide(status(503), 1, **options).final is None
    assert (blocked(5.0, **options).action, blocked(5.0, **options).final) == (action, final)
    assert blocked(60.0, 570.0, **options).final == "dead"
    assert blocked(60.0, 570.0, dlq_enabled=False, **options).final == "failed"


def test_end_status_is_dead_with_the_queue_and_failed_without() -> None:
    assert (end_status(True), end_status(False)) == ("dead", "failed")


def test_a_busy_idempotency_key_defers_with_its_own_source() -> None:
    decision = blocked(1.0, 4.0, source="idempotency-busy")
    assert decision == Decision(
        action="defer",
        delay_s=1.0,
        delay_source="idempotency-busy",
        strategy="idempotency-wait",
        reason=(
            "Another delivery of the same idempotency key is running for another 1.0 s; "
            "deferring without spending an attempt (5.0 s of the 600.0 s defer window)."
        ),
    )
    assert len("idempotency-busy") <= 16  # the width of attempts.delay_source


def test_defer_window_boundary_is_inclusive() -> None:
    assert blocked(10.0, 590.0).action == "defer"
    assert blocked(10.0, 590.5).action == "dead_letter"


@pytest.mark.parametrize(
    ("options", "action", "strategy"),
    [
        ({"has_fallback": True}, "fallback", "server-error-circuit"),
        ({}, "dead_letter", "dead-letter-queue"),
        ({"dlq_enabled": False}, "fail", "server-error-circuit"),
        ({"has_fallback": True, "dlq_enabled": False}, "fallback", "server-error-circuit"),
    ],
)
def test_blocked_beyond_the_window_gives_up(
    options: dict[str, Any], action: str, strategy: str
) -> None:
    decision = blocked(60.0, 570.0, **options)
    assert decision.action == action
    assert decision.strategy == strategy
    assert decision.delay_s is None
    assert decision.delay_source is None
    assert "beyond the 600.0 s defer window" in decision.reason
    assert "630.0 s" in decision.reason


def test_negative_remaining_time_defers_for_zero_seconds() -> None:
    decision = blocked(-3.0, 10.0)
    assert decision.action == "defer"
    assert decision.delay_s == 0.0


# --- Retry-After cap --------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["3153600000", "Fri, 31 Dec 2125 23:59:59 GMT"])
def test_a_huge_retry_after_is_capped_and_recorded_as_capped(header: str) -> None:
    from structlog.testing import capture_logs

    c = status(429, {"Retry-After": header})
    assert c.retry_after_s is not None and c.retry_after_s > 3e9
    with capture_logs() as logs:
        capped = cap_retry_after(c, 600.0, "payments")
    assert capped.retry_after_s == 600.0
    assert capped.retry_after_requested_s == c.retry_after_s
    assert [e["event"] for e in logs] == ["retry_after_capped"]
    assert logs[0]["integration"] == "payments" and logs[0]["cap_s"] == 600.0
    d = decide(capped, 1)
    assert (d.action, d.delay_s, d.delay_source) == ("retry", 600.0, "retry-after-cap")
    assert decide(capped, 1, max_countdown_s=30).delay_s == 30  # the countdown cap still holds


def test_a_retry_after_within_the_cap_is_left_alone() -> None:
    from structlog.testing import capture_logs

    c = status(429, {"Retry-After": "120"})
    with capture_logs() as logs:
        assert cap_retry_after(c, 120.0, "payments") is c
        assert cap_retry_after(status(503), 1.0, "payments").retry_after_s is None
    assert logs == []
    assert decide(c, 1).delay_source == "retry-after"


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="The Retry-After cap must not be negative, got -1"):
        cap_retry_after(status(429, {"Retry-After": "5"}), -1, "payments")


def test_an_answer_too_large_is_dead_lettered_without_fallbacks() -> None:
    c = classify(ResponseTooLargeError("went past its max_response_bytes"))
    d = decide(c, 1, has_fallback=True)
    assert d.action == "dead_letter"
    assert "is not retryable (response_too_large)" in d.reason
    assert "fallbacks cannot repair a response too large" in d.reason
