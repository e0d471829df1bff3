"""Secret redaction for everything that leaves the worker: audit rows, logs, Sentry, DLQ listings.

Each function returns a new value and never mutates its input. Matching is by name (header,
query parameter, JSON key) and, for free text, by pattern. Redaction errs on the side of
hiding: a key such as `max_tokens` is hidden too, because a missed secret costs more than a
hidden counter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "[REDACTED]"
_MAX_PASSES = 4

_SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-auth-token",
})
_SECRET_HEADER_PARTS = ("token", "secret", "password", "apikey", "api-key", "api_key", "session")

_SECRET_PARAMS = frozenset({
    "token", "access_token", "refresh_token", "id_token", "api_key", "apikey", "api-key", "key",
    "secret", "client_secret", "password", "passwd", "signature", "sig", "auth", "code",
    "x-amz-signature", "x-amz-credential", "x-amz-security-token",
})
_SECRET_PARAM_PARTS = ("token", "secret", "password", "apikey", "api_key", "api-key")

# Body keys are compared with case and punctuation removed: "Card-Number" -> "cardnumber".
_SECRET_BODY_KEYS = frozenset({
    "password", "passwd", "pwd", "secret", "token", "apikey", "authorization", "clientsecret",
    "cardnumber", "cvv", "cvc", "pin", "ssn", "privatekey", "accesskey", "cookie",
})
_SECRET_BODY_PARTS = ("password", "secret", "token", "apikey")

_TEXT_KEY = (
    r"[\w.-]*?(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|authorization|session[_-]?id|signature)[\w.-]*|pwd|auth|cookie|sessid"
)
_TEXT_PAIR = re.compile(
    rf"""(?ix)
    (?P<key>(?P<q>["']?)\b(?:{_TEXT_KEY})\b(?P=q))   # key, optionally quoted
    (?P<sep>\s*[:=]\s*)
    (?P<value>"(?:[^"\\]|\\.)*"|'[^']*'               # quoted value
       |(?:(?:bearer|basic|digest|negotiate)\s+)?[^\s"'&,;<>(){{}}\[\]]+)
    """
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|digest|negotiate)\s+[A-Za-z0-9._~+/=-]{6,}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]+@")
_URL = re.compile(r"(?i)\bhttps?://[^\s\"'<>]+")
# Every pattern above needs one of these to match: text without any of them cannot change,
# and most log lines have none. ASCII text is tested with `in`; other text with a pattern of the
# same flag, so with the same Unicode case folding (a dotless i matches "i", a long s "s").
_TRIGGER_WORDS = ("://", "passw", "secret", "token", "api", "access", "private", "auth", "sess",
                  "signature", "pwd", "cookie", "bearer", "basic", "digest", "negotiate")
_TRIGGER = re.compile("(?i)" + "|".join(map(re.escape, _TRIGGER_WORDS)))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` with secret values replaced by "[REDACTED]"; names keep their case."""
    return {
        name: REDACTED if _is_secret_header(name) else value for name, value in headers.items()
    }


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of query parameters with secret values (token, api_key, code...) redacted."""
    return {
        name: REDACTED if _is_secret_param(str(name)) else value for name, value in params.items()
    }


def redact_url(url: str) -> str:
    """`url` with user information and secret query/fragment parameters redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _scrub(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = REDACTED + at + host if userinfo else parts.netloc
    redacted = (parts.scheme, netloc, parts.path, _redact_query(parts.query),
                _redact_query(parts.fragment))
    return url if redacted == tuple(parts) else urlunsplit(redacted)


def redact_body(obj: Any) -> Any:
    """A deep copy of a JSON-like value with secret keys redacted and free text scrubbed."""
    if isinstance(obj, Mapping):
        return {
            key: REDACTED if _is_secret_body_key(str(key)) else redact_body(value)
            for key, value in obj.items()
        }
    if isinstance(obj, list):
        return [redact_body(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(redact_body(item) for item in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redact_text(text: str) -> str:
    """Free text with credentials redacted.

    Covers URL user information (`https://user:pass@`), secret query parameters inside URLs,
    `key=value` / `key: value` pairs with secret-like keys (quoted JSON too), and
    `Bearer`/`Basic` credentials. Applying it twice changes nothing more.
    """
    return scrub_passes(text) if _may_hold_secrets(text) else text


def _may_hold_secrets(text: str) -> bool:
    if text.isascii():
        lowered = text.lower()
        return any(word in lowered for word in _TRIGGER_WORDS)
    return _TRIGGER.search(text) is not None


def scrub_passes(text: str) -> str:
    """`redact_text` without its quick test for trigger words (tests compare the two)."""
    for _ in range(_MAX_PASSES):  # one redaction can expose another match in contrived text
        again = _scrub(_URL.sub(lambda m: redact_url(m.group(0)), text))
        if again == text:
            break
        text = again
    return text


def _scrub(text: str) -> str:
    """The pattern rules of `redact_text`, without parsing URLs."""
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _TEXT_PAIR.sub(_redact_pair, text)
    return _AUTH_SCHEME.sub(lambda m: m.group(1) + " " + REDACTED, text)


def _redact_pair(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[0] in "\"'" else ""
    return match.group("key") + match.group("sep") + quote + REDACTED + quote


def _redact_query(query: str) -> str:
    """Redact the values of secret parameters, leaving every other byte as it was."""
    if not query:
        return query
    pieces = []
    for piece in query.split("&"):
        name, sep, _ = piece.partition("=")
        if sep and _is_secret_param(unquote_plus(name)):
            piece = name + "=" + REDACTED
        pieces.append(piece)
    return "&".join(pieces)


def _is_secret_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or any(part in lowered for part in _SECRET_HEADER_PARTS)


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_PARAMS or any(part in lowered for part in _SECRET_PARAM_PARTS)


def _is_secret_body_key(key: str) -> bool:
    folded = re.sub(r"[^a-z0-9]", "", key.lower())
    return folded in _SECRET_BODY_KEYS or any(part in folded for part in _SECRET_BODY_PARTS)
