"""The error taxonomy: what kind of failure a call ended in, and whether retrying can help.

`classify` looks at evidence in a fixed order of trust:

1. the exception's type (and the types of the exceptions it was raised from),
2. the HTTP status of the response,
3. only when neither decides, words in the exception's message.

Response bodies are never read for classification: a 404 page that mentions "500" is still a
client error. One failure may carry several categories (a 503 is a server error and transient);
the primary category is the one with the highest priority, in the order of `ErrorCategory`.
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from http import HTTPStatus

import requests
import urllib3.exceptions as u3

from recovery.core.redact import redact_text


class ErrorCategory(StrEnum):
    """Kinds of failure, highest priority first."""

    NETWORK = "network"
    AUTHENTICATION = "authentication"
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    RESPONSE_TOO_LARGE = "response_too_large"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"


_PRIORITY: tuple[ErrorCategory, ...] = tuple(ErrorCategory)

RETRYABLE_CATEGORIES: frozenset[ErrorCategory] = frozenset(
    {
        ErrorCategory.NETWORK,
        ErrorCategory.RATE_LIMIT,
        ErrorCategory.SERVER_ERROR,
        ErrorCategory.TRANSIENT,
    }
)

_BREAKER_CATEGORIES: frozenset[ErrorCategory] = frozenset(
    {ErrorCategory.NETWORK, ErrorCategory.SERVER_ERROR, ErrorCategory.TRANSIENT}
)

STRATEGY_BY_CATEGORY: dict[ErrorCategory, str] = {
    ErrorCategory.NETWORK: "network-retry",
    ErrorCategory.RATE_LIMIT: "rate-limit-backoff",
    ErrorCategory.SERVER_ERROR: "server-error-circuit",
    ErrorCategory.AUTHENTICATION: "auth-token-refresh",
    ErrorCategory.CLIENT_ERROR: "dead-letter-queue",
    ErrorCategory.RESPONSE_TOO_LARGE: "response-size-limit",
    ErrorCategory.TRANSIENT: "network-retry",
    ErrorCategory.UNKNOWN: "dead-letter-queue",
}

MAX_MESSAGE_CHARS = 500
_RETRY_AFTER_STATUSES = frozenset({429, 503})

_NET = frozenset({ErrorCategory.NETWORK})
_NET_TRANSIENT = frozenset({ErrorCategory.NETWORK, ErrorCategory.TRANSIENT})
_SERVER = frozenset({ErrorCategory.SERVER_ERROR})
_CLIENT = frozenset({ErrorCategory.CLIENT_ERROR})
_TRANSIENT = frozenset({ErrorCategory.TRANSIENT})
_AUTH = frozenset({ErrorCategory.AUTHENTICATION})
_RATE = frozenset({ErrorCategory.RATE_LIMIT})
_TOO_LARGE = frozenset({ErrorCategory.RESPONSE_TOO_LARGE})

#: Failures no fallback may paper over: the request (or what it asks for) is the problem, and a
#: secondary API, a cached answer or a default value would hide it instead of reporting it.
UNREPAIRABLE_CATEGORIES: frozenset[ErrorCategory] = frozenset(
    {ErrorCategory.CLIENT_ERROR, ErrorCategory.RESPONSE_TOO_LARGE}
)


class ResponseTooLargeError(requests.RequestException):
    """The upstream's answer exceeded the integration's `max_response_bytes`; reading stopped.

    Not retryable (the same request brings the same answer) and no evidence that the upstream
    is unhealthy, so it never counts against the breaker.
    """


class ResponseDeadlineError(requests.Timeout):
    """The whole call (connect, headers and every body read) outlasted its overall deadline.

    A slow-drip answer never trips a per-read timeout; this does. Transient: retryable.
    """


@dataclass(frozen=True)
class Classification:
    """What a failed call tells us. `message` is short and already free of secrets."""

    categories: frozenset[ErrorCategory]
    primary: ErrorCategory
    retryable: bool
    status: int | None
    retry_after_s: float | None
    message: str
    strategy: str
    #: What the server asked for when `retry_after_s` was capped (policy.cap_retry_after).
    retry_after_requested_s: float | None = None

    def counts_against_breaker(self) -> bool:
        """Whether this failure is evidence that the upstream is unhealthy.

        Network failures, timeouts, transient failures and 5xx count. A 4xx answer (even a
        transient one such as 423 Locked) proves the upstream is up and answering, so only
        408, where the server gave up waiting, counts among them.
        """
        if not self.categories & _BREAKER_CATEGORIES:
            return False
        return self.status is None or self.status >= 500 or self.status == 408


# Checked in order; the first matching type decides. Subclasses come before their bases
# (urllib3's NewConnectionError is a ConnectTimeoutError, requests' ConnectTimeout a
# ConnectionError, requests' JSONDecodeError an InvalidJSONError).
_TYPE_RULES: tuple[tuple[tuple[type[BaseException], ...], frozenset[ErrorCategory]], ...] = (
    ((ResponseTooLargeError,), _TOO_LARGE),
    ((ResponseDeadlineError,), _TRANSIENT),
    ((u3.NewConnectionError,), _NET),
    ((requests.Timeout, u3.TimeoutError, TimeoutError), _NET_TRANSIENT),
    ((requests.exceptions.ChunkedEncodingError, u3.ProtocolError), _NET_TRANSIENT),
    ((u3.IncompleteRead, http.client.HTTPException), _NET_TRANSIENT),
    ((requests.ConnectionError, u3.SSLError, u3.ProxyError), _NET),
    ((requests.exceptions.JSONDecodeError, requests.exceptions.ContentDecodingError), _SERVER),
    ((requests.exceptions.RetryError, u3.DecodeError, u3.ResponseError), _SERVER),
    (
        (
            requests.exceptions.InvalidJSONError,
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidHeader,
            requests.exceptions.URLRequired,
            u3.LocationValueError,
        ),
        _CLIENT,
    ),
    ((ConnectionResetError, ConnectionAbortedError, BrokenPipeError), _NET_TRANSIENT),
    ((ConnectionRefusedError, socket.gaierror, socket.herror), _NET),
)

_ERRNO_RULES: dict[int, frozenset[ErrorCategory]] = {
    errno.ECONNRESET: _NET_TRANSIENT,
    errno.ECONNABORTED: _NET_TRANSIENT,
    errno.EPIPE: _NET_TRANSIENT,
    errno.ETIMEDOUT: _NET_TRANSIENT,
    errno.ECONNREFUSED: _NET,
    errno.EHOSTUNREACH: _NET,
    errno.ENETUNREACH: _NET,
    errno.ENETDOWN: _NET,
    errno.EHOSTDOWN: _NET,
}

# Last resort, matched against "<type name split into words> <message>", lower case.
# Bare numbers are deliberately absent: "500" in a message proves nothing.
_MESSAGE_RULES: tuple[tuple[re.Pattern[str], frozenset[ErrorCategory]], ...] = (
    (
        re.compile(
            r"\b(econnreset|econnaborted|epipe|econnrefused|ehostunreach|enetunreach|enotfound"
            r"|eai_again|connection (reset|refused|aborted|closed)|broken pipe|socket hang up"
            r"|network is unreachable|no route to host|name or service not known)\b"
        ),
        _NET,
    ),
    (re.compile(r"\b(etimedout|esockettimedout|timed? ?out)\b"), _NET_TRANSIENT),
    (
        re.compile(r"\b(rate[ -]?limit\w*|too many requests|quota exceeded|throttl\w*)\b"),
        _RATE,
    ),
    (
        re.compile(
            r"\b(unauthori[sz]ed|unauthenticated|forbidden|invalid (api )?(token|credentials)"
            r"|token (has )?expired|authentication (failed|required))\b"
        ),
        _AUTH,
    ),
    (re.compile(r"\b(internal server error|bad gateway|gateway time-?out)\b"), _SERVER),
    (re.compile(r"\bservice unavailable\b"), _SERVER | _TRANSIENT),
    (re.compile(r"\b(temporar(il)?y (unavailable|failure)|try again)\b"), _TRANSIENT),
    (re.compile(r"\b(bad request|invalid request|validation (failed|error))\b"), _CLIENT),
)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SECONDS = re.compile(r"[+-]?\d+(\.\d+)?")


def classify(
    error: BaseException | None = None, response: requests.Response | None = None
) -> Classification:
    """Classify a failed call from its exception, its response, or both.

    A `requests.HTTPError` that carries a response is judged by that response's status.
    Raises ValueError when given neither an exception nor a response.
    """
    if error is None and response is None:
        raise ValueError("classify() needs an exception or a response; it was given neither.")
    if response is None and isinstance(error, requests.HTTPError):
        response = error.response
    status = response.status_code if response is not None else None
    categories = (
        (_categories_from_types(error) if error is not None else None)
        or (_categories_from_status(status) if status is not None else None)
        or (_categories_from_message(error) if error is not None else None)
        or frozenset({ErrorCategory.UNKNOWN})
    )
    primary = min(categories, key=_PRIORITY.index)
    retry_after = None
    if response is not None and status in _RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return Classification(
        categories=categories,
        primary=primary,
        retryable=bool(categories & RETRYABLE_CATEGORIES),
        status=status,
        retry_after_s=retry_after,
        message=_describe(error, response),
        strategy=STRATEGY_BY_CATEGORY[primary],
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (RFC 7231).

    Negative values and dates in the past give 0. Unparseable values give None. Very large
    values are returned as they are; the retry policy caps them.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        return max(0.0, float(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    reference = now if now is not None else datetime.now(UTC)
    if reference.tzinfo is None:
        reference = reference.replace(tzinfo=UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - reference).total_seconds())


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, then what it was explicitly raised from (`raise ... from`, urllib3 `reason`)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        current = current.__cause__ or (reason if isinstance(reason, BaseException) else None)


def _categories_from_types(error: BaseException) -> frozenset[ErrorCategory] | None:
    for candidate in _causes(error):
        for types, categories in _TYPE_RULES:
            if isinstance(candidate, types):
                return categories
        if isinstance(candidate, OSError) and candidate.errno in _ERRNO_RULES:
            return _ERRNO_RULES[candidate.errno]
    return None


def _categories_from_status(status: int) -> frozenset[ErrorCategory] | None:
    """Categories implied by an HTTP status; None for statuses that are not failures."""
    if status in (401, 403, 407):
        return _AUTH
    if status in (425, 429):
        return _RATE
    if status in (408, 423):
        # 408: the server timed out waiting for us. 423 Locked: the lock will be released.
        return _TRANSIENT
    if 400 <= status < 500:
        # Including 409 Conflict: the request clashes with the resource's state, and sending
        # it again unchanged (possibly not idempotently) is not the way to resolve that.
        return _CLIENT
    if status == 503:
        return _SERVER | _TRANSIENT
    if 500 <= status < 600:
        return _SERVER
    return None


def _categories_from_message(error: BaseException) -> frozenset[ErrorCategory] | None:
    words = _CAMEL_BOUNDARY.sub(" ", type(error).__name__)
    text = f"{words} {str(error)[:4000]}".lower()
    found: frozenset[ErrorCategory] = frozenset()
    for pattern, categories in _MESSAGE_RULES:
        if pattern.search(text):
            found |= categories
    return found or None


def _describe(error: BaseException | None, response: requests.Response | None) -> str:
    """A short, redacted summary such as "HTTP 503 Service Unavailable"."""
    parts: list[str] = []
    if response is not None:
        parts.append(f"HTTP {response.status_code} {_reason_phrase(response)}".rstrip())
    if error is not None and not (
        isinstance(error, requests.HTTPError) and error.response is not None
    ):
        detail = str(error)[:4000].strip()
        name = type(error).__name__
        parts.append(f"{name}: {detail}" if detail else name)
    message = redact_text("; ".join(parts))
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return message


def _reason_phrase(response: requests.Response) -> str:
    if response.reason:
        return str(response.reason)
    try:
        return HTTPStatus(response.status_code).phrase
    except ValueError:
        return ""
