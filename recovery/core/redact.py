"""Redaction for everything that leaves the worker: audit rows, logs, Sentry, DLQ listings, Flower.

Two tools, for two kinds of data:

- A job's request (headers, query parameters, body) is shown by allowlist. By default a display
  keeps header and parameter *names* and replaces every value with "[REDACTED]"; a body is never
  shown, only a summary of its type and size (`{"[REDACTED]": "object of 3 keys, 96 bytes"}`).
  Top-level key names are not shown either: in a map keyed by e-mail address or token they are
  the data. An integration's `audit:` block (`AuditPolicy`) names the parameters, headers and
  body fields (dotted paths such as `order.amount`) whose values may be shown. An Authorization
  value keeps a known scheme (`Bearer [REDACTED]`), never its credential. `redacted_request` is
  the one display API; `redact_headers`, `redact_params` and `redact_body` are its parts.
- Free text (error messages, exception strings, log lines) and free-form data (Sentry events,
  alert details) cannot be allowlisted: `redact_text` and `scrub_data` hide values by name and
  by pattern, as a last line of defence.

Each function returns a new value and never mutates its input. Redacting a redacted value again
with the same policy changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from recovery.config.audit_policy import HIDE_ALL, AuditPolicy, never_shown
from recovery.config.loader import get_registry

REDACTED = "[REDACTED]"
_MAX_PASSES = 4

#: Headers whose value is never shown, whatever an integration's `audit.show_headers` says
#: (with every header whose name ends in "authorization": those show their scheme only).
AUTH_SCHEMES = (
    "AWS4-HMAC-SHA256", "Klaviyo-API-Key", "Zoho-oauthtoken", "SCRAM-SHA-256", "SCRAM-SHA-1",
    "PrivateToken", "Negotiate", "Signature", "Client-ID", "SharedKey", "GenieKey", "Bearer",
    "Digest", "Api-Key", "ApiKey", "Splunk", "Mutual", "Basic", "Token", "OAuth", "vapid",
    "DPoP", "GNAP", "HOBA", "NTLM", "SSWS", "Hawk", "JWT", "Key",
)
_SCHEMES = "|".join(re.escape(scheme) for scheme in AUTH_SCHEMES)
_SCHEME_VALUE = re.compile(rf"(?i)\s*({_SCHEMES})\s+\S")

# Secret names, compared with case and punctuation removed ("X-Api-Key" -> "xapikey").
_SECRET_NAMES = frozenset({
    "authorization", "proxyauthorization", "xauthorization", "authentication", "cookie",
    "setcookie", "apikey", "xapikey", "key", "sig", "auth", "code", "sid", "jwt", "pwd", "pass",
    "pin", "ssn", "cvv", "cvv2", "cvc", "iban", "otp",
})
_SECRET_NAME_PARTS = (
    "token", "secret", "passw", "passphrase", "apikey", "accesskey", "privatekey", "session",
    "sessid", "signature", "credential", "authoriz", "authentic", "subscriptionkey", "assertion",
    "cardnumber", "cvv", "jwt", "cookie", "amzcredential",
)

_TEXT_KEY = (
    r"[\w.-]*?(?:pass(?:word|wd|phrase)|secret|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|subscription[_-]?key|authori[sz]ation|authentication|credentials?"
    r"|session[_-]?id|signature|client[_-]?assertion|card[_.-]?number|cvv2?)[\w.-]*"
    r"|pwd|pass|auth|cookie|sessid|sid|jwt|cvc|iban"
)
_TEXT_PAIR = re.compile(
    rf"""(?ix)
    (?P<key>(?P<q>["']?)\b(?:{_TEXT_KEY})\b(?P=q))    # key, optionally quoted
    (?P<sep>\s*[:=]\s*)
    (?P<value>"(?:[^"\\]|\\.)*"|'[^']*'                # quoted value
       |(?:(?:{_SCHEMES})\s+)?(?:\[REDACTED\]|[^\s"'&,;<>(){{}}\[\]]+))
    """
)
# An Authorization value in free text without a known scheme: every word of it up to a
# delimiter may be the credential ("Authorization: key123 sig456"), so all of them go.
_AUTH_RUN = re.compile(
    rf"""(?ix)
    (?P<key>\b[\w.-]*?(?:authori[sz]ation|authentication)\b\s*[:=][ \t]*)
    (?!(?:{_SCHEMES})\s|["'\[\s])
    (?P<value>[^,;&\r\n"'<>(){{}}\[\]]*[^,;&\r\n"'<>(){{}}\[\]\s])
    """
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|digest|negotiate)\s+[A-Za-z0-9._~+/=-]{6,}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]+@")
_URL = re.compile(r"(?i)\bhttps?://[^\s\"'<>]+")
# Every pattern above needs one of these to match: text without any of them cannot change,
# and most log lines have none. ASCII text is tested with `in`; other text with a pattern of the
# same flag, so with the same Unicode case folding (a dotless i matches "i", a long s "s").
_TRIGGER_WORDS = ("://", "pass", "secret", "token", "api", "access", "private", "auth", "sess",
                  "signature", "pwd", "cookie", "bearer", "basic", "digest", "negotiate",
                  "subscription", "cred", "sid", "jwt", "cvv", "cvc", "iban", "assertion",
                  "card")
_TRIGGER = re.compile("(?i)" + "|".join(map(re.escape, _TRIGGER_WORDS)))

_SUMMARY = re.compile(r"(?:object of \d+ keys?|array of \d+ items?|string|number|boolean"
                      r"|null|value), \d+ bytes?")


def policy_for(integration_id: str) -> AuditPolicy:
    """The `audit:` policy of an integration of the process's registry; `HIDE_ALL` when the
    integration (or the registry) cannot be found, because a display must never fail a job."""
    try:
        return get_registry().get(integration_id).audit
    except (ValueError, KeyError, OSError):
        return HIDE_ALL


def redacted_request(method: str, path: str, params: Mapping[str, Any] | None,
                     headers: Mapping[str, str] | None, body: Any,
                     policy: AuditPolicy = HIDE_ALL) -> dict[str, Any]:
    """A request as every display shows it: the one display API (see `JobSpec.redacted`)."""
    return {"method": method, "path": redact_url(path),
            "params": redact_params(params or {}, policy),
            "headers": redact_headers(headers or {}, policy), "json": redact_body(body, policy)}


def redact_headers(headers: Mapping[str, str], policy: AuditPolicy = HIDE_ALL) -> dict[str, str]:
    """Header names (case kept) with values redacted, except those `policy` shows."""
    return {name: _header_value(name, value, policy) for name, value in headers.items()}


def _header_value(name: str, value: Any, policy: AuditPolicy) -> str:
    lowered = str(name).lower()
    if lowered.endswith("authorization"):
        return authorization_scheme(str(value))
    if lowered in policy.show_headers and not never_shown(lowered):
        return redact_text(str(value))
    return REDACTED


def authorization_scheme(value: str) -> str:
    """`Token abc` -> `Token [REDACTED]`; a value without a known scheme -> `[REDACTED]`."""
    match = _SCHEME_VALUE.match(value)
    return f"{match.group(1)} {REDACTED}" if match else REDACTED


def redact_params(params: Mapping[str, Any], policy: AuditPolicy = HIDE_ALL) -> dict[str, Any]:
    """Query parameter names with values redacted, except those `policy` shows."""
    return {name: _shown(value) if str(name) in policy.show_params else REDACTED
            for name, value in params.items()}


def _shown(value: Any) -> Any:
    """An allowed value as displays show it: scalars (free text scrubbed), lists of them."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_shown(item) for item in value]
    return REDACTED


def redact_body(body: Any, policy: AuditPolicy = HIDE_ALL) -> Any:
    """A body as displays show it: None stays None; anything else becomes a summary of its
    type and size under the key "[REDACTED]", beside the fields `policy` shows."""
    if body is None:
        return None
    previous = body.get(REDACTED) if isinstance(body, Mapping) else None
    if isinstance(previous, str) and _SUMMARY.fullmatch(previous):
        summary = previous  # already a display: summarising it again would describe the summary
    else:
        summary = describe_body(body)
    picked = _pick(body, list(policy.show_body_fields)) if policy.show_body_fields else None
    shown = picked if isinstance(picked, dict) else {}
    return {**shown, REDACTED: summary}


def describe_body(body: Any) -> str:
    """A body's type and size in JSON bytes, e.g. "object of 3 keys, 96 bytes"."""
    size = len(json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
               .encode("utf-8", "replace"))
    if isinstance(body, Mapping):
        kind = f"object of {len(body)} key{'' if len(body) == 1 else 's'}"
    elif isinstance(body, list | tuple):
        kind = f"array of {len(body)} item{'' if len(body) == 1 else 's'}"
    elif isinstance(body, str):
        kind = "string"
    elif isinstance(body, bool):
        kind = "boolean"
    elif isinstance(body, int | float):
        kind = "number"
    else:
        kind = "null" if body is None else "value"
    return f"{kind}, {size} byte{'' if size == 1 else 's'}"


_MISSING = object()


def _pick(value: Any, paths: list[tuple[str, ...]]) -> Any:
    """The parts of `value` that `paths` (the segments still to walk) reach, or `_MISSING`.

    A path shows only what it ends at: a scalar, or a list of scalars; an object there is
    shown as "[REDACTED]". A longer path wins over a shorter one ending at the same object.
    """
    deeper = [path for path in paths if path]
    if isinstance(value, Mapping):
        if not deeper:
            return REDACTED
        groups: dict[str, list[tuple[str, ...]]] = {}
        for path in deeper:
            groups.setdefault(path[0], []).append(path[1:])
        picked = {key: _pick(value[key], rest) for key, rest in groups.items() if key in value}
        found = {key: item for key, item in picked.items() if item is not _MISSING}
        return found or _MISSING
    if isinstance(value, list | tuple):
        if not deeper:
            return _shown(value)
        items = [item for item in (_pick(entry, paths) for entry in value)
                 if item is not _MISSING]
        return items or _MISSING
    return _shown(value) if len(deeper) < len(paths) else _MISSING


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


def scrub_data(obj: Any, view: Callable[[Mapping[Any, Any]], Any] | None = None,
               _parent: str = "") -> Any:
    """A deep copy of free-form JSON-like data (a Sentry event, alert details) with the values
    of secret-looking keys redacted (`card: {number: ...}` too) and free text scrubbed.

    `view`, when given, sees each mapping first: what it returns other than None replaces the
    mapping as it is (a job message becomes its redacted display, for one).
    """
    if isinstance(obj, Mapping):
        shown = view(obj) if view is not None else None
        if shown is not None:
            return shown
        return {key: REDACTED if is_secret_name(str(key), _parent)
                else scrub_data(value, view, str(key)) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        items = [scrub_data(item, view, _parent) for item in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def is_secret_name(name: str, parent: str = "") -> bool:
    """Whether a header, parameter or key name looks like it holds a credential or card data;
    `parent` is the enclosing key, so `number` inside `card` counts as `card.number`."""
    folded = re.sub(r"[^a-z0-9]", "", name.lower())
    if folded in _SECRET_NAMES or any(part in folded for part in _SECRET_NAME_PARTS):
        return True
    return bool(parent) and re.sub(r"[^a-z0-9]", "", parent.lower()) + folded == "cardnumber"


def redact_text(text: str) -> str:
    """Free text with credentials redacted.

    Covers URL user information (`https://user:pass@`), secret query parameters inside URLs,
    `key=value` / `key: value` pairs with secret-like keys (quoted JSON too; a known
    Authorization scheme is kept), and `Bearer`/`Basic` credentials. Applying it twice changes
    nothing more.
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
    text = _AUTH_RUN.sub(lambda m: m.group("key") + REDACTED, text)
    text = _TEXT_PAIR.sub(_redact_pair, text)
    return _AUTH_SCHEME.sub(lambda m: m.group(1) + " " + REDACTED, text)


def _redact_pair(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[0] in "\"'" else ""
    inner = value[1:-1] if quote else value
    scheme = _SCHEME_VALUE.match(inner)
    shown = f"{scheme.group(1)} {REDACTED}" if scheme else REDACTED
    return match.group("key") + match.group("sep") + quote + shown + quote


def _redact_query(query: str) -> str:
    """Redact the values of secret parameters, leaving every other byte as it was."""
    if not query:
        return query
    pieces = []
    for piece in query.split("&"):
        name, sep, _ = piece.partition("=")
        if sep and is_secret_name(unquote_plus(name)):
            piece = name + "=" + REDACTED
        pieces.append(piece)
    return "&".join(pieces)
