"""Tests for the error taxonomy in recovery.core.errors."""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
import urllib3.exceptions as u3
from hypothesis import given
from hypothesis import strategies as st

from recovery.core.errors import (
    RETRYABLE_CATEGORIES,
    STRATEGY_BY_CATEGORY,
    Classification,
    ErrorCategory,
    ResponseDeadlineError,
    ResponseTooLargeError,
    classify,
    parse_retry_after,
)

NET = ErrorCategory.NETWORK
AUTH = ErrorCategory.AUTHENTICATION
RATE = ErrorCategory.RATE_LIMIT
SERVER = ErrorCategory.SERVER_ERROR
CLIENT = ErrorCategory.CLIENT_ERROR
TRANSIENT = ErrorCategory.TRANSIENT
UNKNOWN = ErrorCategory.UNKNOWN


def make_response(
    status: int,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    reason: str | None = None,
) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response._content = body
    response.reason = reason  # type: ignore[assignment]
    response.url = "https://api.example.com/v1/things"
    return response


def http_error(status: int, text: str = "", body: bytes = b"") -> requests.HTTPError:
    return requests.HTTPError(text, response=make_response(status, body=body))


# --- the original design's cases ------------------------------------------------------------


def test_econnreset_is_network_and_retryable() -> None:
    c = classify(OSError(errno.ECONNRESET, "Connection reset by peer"))
    assert NET in c.categories
    assert c.primary is NET
    assert c.retryable
    assert c.strategy == "network-retry"


def test_econnreset_in_a_plain_message_is_network() -> None:
    c = classify(Exception("read ECONNRESET"))
    assert c.categories == {NET}
    assert c.retryable


def test_429_is_rate_limit() -> None:
    c = classify(response=make_response(429))
    assert c.categories == {RATE}
    assert c.retryable
    assert c.strategy == "rate-limit-backoff"


def test_400_is_not_retryable() -> None:
    c = classify(response=make_response(400))
    assert c.categories == {CLIENT}
    assert not c.retryable
    assert c.strategy == "dead-letter-queue"


# --- every status class ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (101, {UNKNOWN}),
        (200, {UNKNOWN}),
        (302, {UNKNOWN}),
        (400, {CLIENT}),
        (401, {AUTH}),
        (403, {AUTH}),
        (404, {CLIENT}),
        (407, {AUTH}),
        (408, {TRANSIENT}),
        (409, {CLIENT}),
        (422, {CLIENT}),
        (423, {TRANSIENT}),
        (425, {RATE}),
        (429, {RATE}),
        (451, {CLIENT}),
        (500, {SERVER}),
        (501, {SERVER}),
        (502, {SERVER}),
        (503, {SERVER, TRANSIENT}),
        (504, {SERVER}),
        (599, {SERVER}),
    ],
)
def test_status_categories(status: int, expected: set[ErrorCategory]) -> None:
    c = classify(response=make_response(status))
    assert c.categories == expected
    assert c.status == status
    assert c.retryable == bool(expected & RETRYABLE_CATEGORIES)


@pytest.mark.parametrize(
    ("status", "strategy"),
    [
        (401, "auth-token-refresh"),
        (408, "network-retry"),
        (429, "rate-limit-backoff"),
        (500, "server-error-circuit"),
        (503, "server-error-circuit"),
        (404, "dead-letter-queue"),
        (200, "dead-letter-queue"),
    ],
)
def test_strategy_follows_the_primary_category(status: int, strategy: str) -> None:
    assert classify(response=make_response(status)).strategy == strategy


# --- exception types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (requests.ConnectionError("refused"), {NET}),
        (requests.exceptions.SSLError("bad certificate"), {NET}),
        (requests.exceptions.ProxyError("proxy down"), {NET}),
        (requests.Timeout("slow"), {NET, TRANSIENT}),
        (requests.ConnectTimeout("slow"), {NET, TRANSIENT}),
        (requests.ReadTimeout("slow"), {NET, TRANSIENT}),
        (requests.exceptions.ChunkedEncodingError("broken"), {NET, TRANSIENT}),
        (requests.exceptions.ContentDecodingError("gzip"), {SERVER}),
        (requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0), {SERVER}),
        (requests.exceptions.InvalidURL("bad url"), {CLIENT}),
        (requests.exceptions.MissingSchema("no scheme"), {CLIENT}),
        (requests.exceptions.InvalidHeader("bad header"), {CLIENT}),
        (u3.ReadTimeoutError(None, "/x", "read timed out"), {NET, TRANSIENT}),  # type: ignore[arg-type]
        (u3.ConnectTimeoutError("connect timed out"), {NET, TRANSIENT}),
        (u3.NewConnectionError(None, "refused"), {NET}),  # type: ignore[arg-type]
        (u3.ProtocolError("Connection aborted."), {NET, TRANSIENT}),
        (u3.SSLError("handshake"), {NET}),
        (u3.DecodeError("bad gzip"), {SERVER}),
        (TimeoutError(), {NET, TRANSIENT}),
        (ConnectionResetError(), {NET, TRANSIENT}),
        (BrokenPipeError(), {NET, TRANSIENT}),
        (ConnectionRefusedError(), {NET}),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), {NET}),
        (OSError(errno.ECONNREFUSED, "refused"), {NET}),
        (OSError(errno.EPIPE, "pipe"), {NET, TRANSIENT}),
        (OSError(errno.ETIMEDOUT, "timed out"), {NET, TRANSIENT}),
        (OSError(errno.EHOSTUNREACH, "unreachable"), {NET}),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_exception_types(error: BaseException, expected: set[ErrorCategory]) -> None:
    c = classify(error)
    assert c.categories == expected
    assert c.retryable == bool(expected & RETRYABLE_CATEGORIES)
    assert c.status is None


def test_max_retry_error_is_judged_by_its_reason() -> None:
    reason = u3.NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]
    assert classify(u3.MaxRetryError(None, "/x", reason)).categories == {NET}  # type: ignore[arg-type]


def test_explicit_cause_is_judged_by_type() -> None:
    try:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError as exc:
            raise RuntimeError("the upstream call failed") from exc
    except RuntimeError as wrapped:
        assert classify(wrapped).categories == {NET}


def test_unrelated_oserror_falls_through_to_unknown() -> None:
    c = classify(OSError(errno.ENOENT, "No such file or directory"))
    assert c.categories == {UNKNOWN}
    assert not c.retryable
    assert c.strategy == "dead-letter-queue"


def test_plain_exception_without_clues_is_unknown() -> None:
    c = classify(Exception("boom"))
    assert c.categories == {UNKNOWN}
    assert c.primary is UNKNOWN
    assert not c.retryable


# --- several categories at once, and priority -------------------------------------------------


def test_503_is_server_error_and_transient_with_server_error_primary() -> None:
    c = classify(response=make_response(503))
    assert c.categories == {SERVER, TRANSIENT}
    assert c.primary is SERVER


def test_timeout_is_network_and_transient_with_network_primary() -> None:
    c = classify(requests.ReadTimeout("read timed out"))
    assert c.categories == {NET, TRANSIENT}
    assert c.primary is NET


def test_message_with_several_clues_collects_them_all() -> None:
    c = classify(Exception("Service Unavailable: rate limit exceeded"))
    assert c.categories == {SERVER, TRANSIENT, RATE}
    assert c.primary is RATE
    assert c.strategy == "rate-limit-backoff"


# --- type beats status beats message ----------------------------------------------------------


def test_type_beats_message() -> None:
    c = classify(ConnectionResetError("rate limit exceeded; unauthorized"))
    assert c.categories == {NET, TRANSIENT}


def test_type_beats_status() -> None:
    c = classify(requests.ReadTimeout("slow body"), make_response(404))
    assert c.categories == {NET, TRANSIENT}
    assert c.status == 404


def test_status_beats_message() -> None:
    c = classify(Exception("Internal Server Error, ECONNRESET"), make_response(404))
    assert c.categories == {CLIENT}


def test_404_whose_body_mentions_500_is_a_client_error() -> None:
    error = http_error(
        404,
        "404 Client Error: Not Found (upstream said 500)",
        body=b"<html>Error 500: internal server error in the legacy proxy</html>",
    )
    c = classify(error)
    assert c.categories == {CLIENT}
    assert not c.retryable


def test_http_error_is_judged_by_its_response_status() -> None:
    c = classify(http_error(503, "503 Server Error"))
    assert c.categories == {SERVER, TRANSIENT}
    assert c.status == 503


def test_http_error_without_response_uses_message_but_not_bare_numbers() -> None:
    assert classify(requests.HTTPError("HTTP 500")).categories == {UNKNOWN}
    assert classify(requests.HTTPError("Bad Gateway")).categories == {SERVER}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("socket hang up", {NET}),
        ("Request timed out after 30000ms", {NET, TRANSIENT}),
        ("ETIMEDOUT", {NET, TRANSIENT}),
        ("Too Many Requests", {RATE}),
        ("API quota exceeded for today", {RATE}),
        ("Unauthorized", {AUTH}),
        ("token expired", {AUTH}),
        ("Bad Gateway", {SERVER}),
        ("resource temporarily unavailable", {TRANSIENT}),
        ("validation failed: email is required", {CLIENT}),
        ("upstream returned 500 and 503", {UNKNOWN}),
        ("timeouts table is full", {UNKNOWN}),
    ],
)
def test_message_patterns_are_a_last_resort(message: str, expected: set[ErrorCategory]) -> None:
    assert classify(Exception(message)).categories == expected


def test_exception_class_name_counts_as_message_text() -> None:
    class RateLimitExceeded(Exception):
        pass

    assert classify(RateLimitExceeded()).categories == {RATE}


# --- breaker accounting -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "counts"),
    [(500, True), (502, True), (503, True), (408, True), (423, False), (429, False),
     (401, False), (400, False), (404, False)],
)
def test_counts_against_breaker_by_status(status: int, counts: bool) -> None:
    assert classify(response=make_response(status)).counts_against_breaker() is counts


def test_network_failures_count_against_breaker_and_unknown_does_not() -> None:
    assert classify(requests.ConnectTimeout("slow")).counts_against_breaker()
    assert classify(ConnectionRefusedError()).counts_against_breaker()
    assert not classify(Exception("boom")).counts_against_breaker()
    assert not classify(requests.exceptions.InvalidURL("x")).counts_against_breaker()


# --- Retry-After ------------------------------------------------------------------------------

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("2.5", 2.5),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("172800", 172800.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),
        ("Sat, 01 Mar 2025 13:00:30 +0100", 30.0),
    ],
)
def test_parse_retry_after_valid(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "1e3", "nan", "inf", "2 s", "0x10",
                                   "Someday, 99 Foo 2025"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_parse_retry_after_accepts_a_naive_now_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:10 GMT", now=naive) == pytest.approx(10.0)


def test_parse_retry_after_defaults_to_the_current_time() -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    seconds = parse_retry_after(format_datetime(later, usegmt=True))
    assert seconds is not None
    assert 3000 < seconds <= 3600


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_read_from_429_and_503(status: int) -> None:
    c = classify(response=make_response(status, {"Retry-After": "12"}))
    assert c.retry_after_s == 12.0


@pytest.mark.parametrize("status", [500, 502, 408, 400])
def test_retry_after_is_ignored_on_other_statuses(status: int) -> None:
    assert classify(response=make_response(status, {"Retry-After": "12"})).retry_after_s is None


def test_retry_after_garbage_or_absent_on_429_is_none() -> None:
    assert classify(response=make_response(429, {"Retry-After": "later"})).retry_after_s is None
    assert classify(response=make_response(429)).retry_after_s is None


def test_retry_after_from_an_http_error_response() -> None:
    error = requests.HTTPError("429", response=make_response(429, {"retry-after": "3"}))
    assert classify(error).retry_after_s == 3.0


# --- messages ---------------------------------------------------------------------------------


def test_message_for_a_response_uses_the_standard_phrase() -> None:
    assert classify(response=make_response(503)).message == "HTTP 503 Service Unavailable"
    assert classify(response=make_response(503, reason="Down")).message == "HTTP 503 Down"
    assert classify(response=make_response(599)).message == "HTTP 599"


def test_message_for_an_http_error_leaves_out_the_url() -> None:
    error = requests.HTTPError(
        "404 Client Error: Not Found for url: https://api.example.com/x?api_key=s3cr3t",
        response=make_response(404),
    )
    assert classify(error).message == "HTTP 404 Not Found"


def test_message_for_an_exception_names_its_type() -> None:
    assert classify(ConnectionResetError("peer went away")).message == (
        "ConnectionResetError: peer went away"
    )
    assert classify(TimeoutError()).message == "TimeoutError"


def test_message_is_redacted() -> None:
    c = classify(Exception("call failed: Authorization: Bearer abcdef0123456789secret"))
    assert "abcdef0123456789secret" not in c.message
    assert c.message.startswith("Exception: call failed")


def test_message_is_at_most_500_characters() -> None:
    c = classify(Exception("x" * 100_000))
    assert len(c.message) == 500
    assert c.message.endswith("...")


def test_classify_needs_something_to_classify() -> None:
    with pytest.raises(ValueError, match="neither"):
        classify()


# --- properties -------------------------------------------------------------------------------


def assert_valid(c: Classification) -> None:
    assert c.categories
    assert c.categories <= set(ErrorCategory)
    assert c.primary in c.categories
    assert c.primary == min(c.categories, key=list(ErrorCategory).index)
    assert c.retryable == bool(c.categories & RETRYABLE_CATEGORIES)
    assert c.strategy == STRATEGY_BY_CATEGORY[c.primary]
    assert UNKNOWN not in c.categories or c.categories == {UNKNOWN}
    assert len(c.message) <= 500


@given(
    status=st.integers(min_value=100, max_value=599),
    message=st.none() | st.text(max_size=300),
    retry_after=st.none() | st.text(max_size=40),
)
def test_any_status_and_message_gives_a_valid_classification(
    status: int, message: str | None, retry_after: str | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    response = make_response(status, headers)
    error = Exception(message) if message is not None else None
    c = classify(error, response)
    assert_valid(c)
    assert c.status == status
    if 400 <= status < 500:
        assert SERVER not in c.categories
    if status not in (429, 503):
        assert c.retry_after_s is None
    if c.retry_after_s is not None:
        assert c.retry_after_s >= 0


@given(message=st.text(max_size=500))
def test_any_exception_message_gives_a_valid_classification(message: str) -> None:
    c = classify(RuntimeError(message))
    assert_valid(c)
    assert c.status is None
    assert c.retry_after_s is None


@given(value=st.text(max_size=60))
def test_parse_retry_after_never_raises_and_is_never_negative(value: str) -> None:
    result = parse_retry_after(value, now=NOW)
    assert result is None or result >= 0


@given(seconds=st.integers(min_value=0, max_value=10**9))
def test_parse_retry_after_round_trips_whole_seconds(seconds: int) -> None:
    assert parse_retry_after(str(seconds), now=NOW) == float(seconds)


# --- response limits --------------------------------------------------------------------------


def test_a_response_over_the_size_limit_is_its_own_non_retryable_category() -> None:
    c = classify(ResponseTooLargeError("The answer of integration 'shop' went past its "
                                       "max_response_bytes (10 bytes); reading stopped."))
    assert c.categories == frozenset({ErrorCategory.RESPONSE_TOO_LARGE})
    assert c.primary is ErrorCategory.RESPONSE_TOO_LARGE
    assert c.retryable is False
    assert c.counts_against_breaker() is False
    assert c.strategy == "response-size-limit"
    assert c.message.startswith("ResponseTooLargeError: The answer of integration 'shop'")
    assert ErrorCategory.RESPONSE_TOO_LARGE not in RETRYABLE_CATEGORIES


def test_a_missed_overall_deadline_is_transient_and_retryable() -> None:
    c = classify(ResponseDeadlineError("did not finish within its 1 s deadline"))
    assert c.categories == frozenset({TRANSIENT})
    assert c.retryable is True
    assert c.counts_against_breaker() is True  # a dripping upstream is not a healthy one
    assert c.strategy == "network-retry"


def test_the_limit_errors_are_requests_exceptions() -> None:
    """The pipeline catches requests.RequestException: both limits must be among them."""
    assert issubclass(ResponseTooLargeError, requests.RequestException)
    assert issubclass(ResponseDeadlineError, requests.Timeout)
