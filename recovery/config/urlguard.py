"""The SSRF guard: a job's path can never leave its integration's base URL.

A job names an integration and a path; the worker joins them. `validate_path` refuses every
form that could move the request elsewhere: absolute or scheme-relative URLs, dot segments,
backslashes, control characters, query strings and fragments (also percent-encoded), in raw
form and behind any number of percent-encoding layers (servers and proxies often decode more
than once). Each segment is checked with its `;` path parameters removed, the way Tomcat, Jetty
and Spring read it, so `/..;/admin` is a dot segment there and refused here; the path that is
sent keeps its parameters (matrix parameters are data to the APIs that use them).
`join_url` then glues the validated path under the base URL without any URL-resolution
algorithm, so the result always starts with the base URL's scheme, host, port and prefix.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping
from urllib.parse import quote, unquote_to_bytes, urlsplit

MAX_PATH_LENGTH = 2048
MAX_ENCODING_LAYERS = 4
MAX_HEADERS = 64
MAX_HEADER_BYTES = 8 * 1024
_SHOWN_CHARS = 200
_DEFAULT_PORTS = {"http": 80, "https": 443}

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but tab
_HEADER_VALUE_ALLOWED = re.compile(r"[\x20-\x7e\t]*")  # visible ASCII, space and tab
#: Framing and hop-by-hop headers: the HTTP client derives them from the request (Host from the
#: base URL, Content-Length from the body) or they steer the connection, not the call.
FRAMING_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade",
})
# Characters allowed unescaped in a joined path: RFC 3986 pchar plus "/" and existing escapes.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


class UnsafePathError(ValueError):
    """A job's path could leave the integration's base URL or is malformed."""


class InvalidBaseURLError(ValueError):
    """An integration's base URL cannot serve as the root of guarded requests."""


class UnsafeHeaderError(ValueError):
    """A header name or value could split or smuggle an HTTP request."""


def show(text: str) -> str:
    """`text` as an escaped repr, at most 200 characters, safe to put in an error message."""
    shown = repr(text)
    return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 3] + "..."


def validate_path(path: str) -> str:
    """Return `path` with exactly one leading "/", or raise UnsafePathError saying why."""
    if not isinstance(path, str):
        raise UnsafePathError(f"The path must be text, got {type(path).__name__}.")
    if not path:
        raise UnsafePathError("The path is empty; give a path such as '/orders'.")
    if len(path) > MAX_PATH_LENGTH:
        raise UnsafePathError(
            f"The path is {len(path)} characters long; the limit is {MAX_PATH_LENGTH}: "
            f"{show(path)}."
        )
    if "?" in path:
        raise UnsafePathError(
            f"The path {show(path)} contains a query string; pass query parameters in "
            "`params` instead."
        )
    if "#" in path:
        raise UnsafePathError(f"The path {show(path)} contains a fragment ('#'); remove it.")
    for layer in _decoded_layers(path):
        problem = _layer_problem(layer)
        if problem:
            raise UnsafePathError(f"The path {show(path)} was refused: it {problem}.")
    return path if path.startswith("/") else "/" + path


def join_url(base_url: str, path: str) -> str:
    """Join a validated `path` under `base_url`; the result always stays under the base URL.

    Characters outside RFC 3986's path alphabet (spaces, Unicode) are percent-encoded as UTF-8;
    existing escapes are kept and a lone "%" becomes "%25".
    """
    root = _root(base_url)
    clean = validate_path(path)
    encoded = quote(_STRAY_PERCENT.sub("%25", clean), safe=_PATH_SAFE)
    return root + "/" + encoded.lstrip("/")


def is_inside(base_url: str, url: str) -> bool:
    """True when `url` has the base URL's scheme, host and port and lies under its prefix.

    Dot segments (also percent-encoded, and also with `;` parameters), an encoded '?' or '#'
    and user information in `url` make it not inside.
    """
    try:
        base_scheme, base_host, base_port, base_path = _origin_and_prefix(base_url)
        target = urlsplit(url)
        target_port = target.port or _DEFAULT_PORTS.get(target.scheme.lower())
    except ValueError:
        return False
    if target.scheme.lower() != base_scheme or "@" in target.netloc:
        return False
    if (target.hostname or "") != base_host or target_port != base_port:
        return False
    if not target.path.startswith(base_path + "/"):
        return False
    try:
        layers = _decoded_layers(target.path)
    except UnsafePathError:
        return False
    for layer in layers:
        folded = unicodedata.normalize("NFKC", layer)
        if any(_bare(segment) in (".", "..") for segment in folded.split("/")):
            return False
    return not any("?" in layer or "#" in layer for layer in layers[1:])


def validate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of `headers` with outer whitespace trimmed from values.

    Refused with UnsafeHeaderError naming the header: more than 64 headers; a name that is not
    an RFC 9110 token, a framing or hop-by-hop name (`FRAMING_HEADERS`, `Proxy-*`), or the same
    name twice in different case; a name or value over 8 KiB; a value holding anything but
    visible ASCII, space and tab (line breaks would split the request, and other text is
    encoded differently by every client and server on the way).
    """
    if not isinstance(headers, Mapping):
        raise UnsafeHeaderError("The headers must be a mapping of header names to text values.")
    if len(headers) > MAX_HEADERS:
        raise UnsafeHeaderError(
            f"There are {len(headers)} headers; the limit is {MAX_HEADERS}. Send fewer headers."
        )
    checked: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, value in headers.items():
        _check_header_name(name)
        first = seen.setdefault(name.lower(), name)
        if first != name:
            raise UnsafeHeaderError(
                f"The header {name!r} is given twice (also as {first!r}); give it once."
            )
        checked[name] = _checked_header_value(name, value)
    return checked


def _check_header_name(name: object) -> None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise UnsafeHeaderError(
            f"The header name {show(str(name))} is not a valid HTTP token; use letters, "
            "digits and -!#$%&'*+.^_`|~ only."
        )
    if len(name) > MAX_HEADER_BYTES:
        raise UnsafeHeaderError(
            f"The header name {show(name)} is {len(name)} bytes long; the limit is "
            f"{MAX_HEADER_BYTES} bytes (8 KiB)."
        )
    folded = name.lower()
    if folded in FRAMING_HEADERS:
        raise UnsafeHeaderError(
            f"The header {name!r} frames the message or steers the connection, which the HTTP "
            "client does itself from the base URL and the body; remove it."
        )
    if folded.startswith("proxy-"):
        raise UnsafeHeaderError(
            f"The header {name!r} is addressed to a proxy, not to the integration's API; "
            "remove it."
        )


def _checked_header_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise UnsafeHeaderError(
            f"The value of header {name!r} must be text, got {type(value).__name__}."
        )
    if len(value) > MAX_HEADER_BYTES:
        raise UnsafeHeaderError(
            f"The value of header {name!r} is {len(value)} characters long; the limit is "
            f"{MAX_HEADER_BYTES} bytes (8 KiB). Send large data in the body."
        )
    if _HEADER_VALUE_FORBIDDEN.search(value):
        raise UnsafeHeaderError(
            f"The value of header {name!r} contains a line break or control character "
            f"({show(value)}); remove it."
        )
    if not _HEADER_VALUE_ALLOWED.fullmatch(value):
        raise UnsafeHeaderError(
            f"The value of header {name!r} contains characters outside visible ASCII "
            f"({show(value)}); header values may hold only visible ASCII, spaces and tabs, so "
            "percent-encode or base64-encode other text."
        )
    return value.strip(" \t")


def is_header_value_text(value: str) -> bool:
    """True when `value` holds only visible ASCII, space and tab (what a header may carry)."""
    return bool(_HEADER_VALUE_ALLOWED.fullmatch(value))


@functools.lru_cache(maxsize=256)
def _origin_and_prefix(base_url: str) -> tuple[str, str, int | None, str]:
    """Scheme, host, port and path prefix of a base URL (computed once: every call of an
    integration checks against the same one)."""
    base = urlsplit(_root(base_url))
    scheme = base.scheme.lower()
    return scheme, base.hostname or "", base.port or _DEFAULT_PORTS.get(scheme), base.path


@functools.lru_cache(maxsize=256)
def _root(base_url: str) -> str:
    """The base URL without a trailing slash, after checking it can root guarded requests."""
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise InvalidBaseURLError(f"The base URL {show(base_url)} is malformed: {exc}.") from exc
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise InvalidBaseURLError(
            f"The base URL {show(base_url)} must start with http:// or https:// and name a host."
        )
    if parts.query or parts.fragment or "@" in parts.netloc or base_url.endswith(("?", "#")):
        raise InvalidBaseURLError(
            f"The base URL {show(base_url)} must not carry user information, a query or a "
            "fragment; put credentials in headers."
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _decoded_layers(path: str) -> list[str]:
    """`path` and each successive percent-decoding of it, until nothing changes."""
    layers = [path]
    while _ESCAPE.search(layers[-1]):
        if len(layers) > MAX_ENCODING_LAYERS:
            raise UnsafePathError(
                f"The path {show(path)} is percent-encoded more than {MAX_ENCODING_LAYERS} "
                "times over; decode it first."
            )
        try:
            layers.append(unquote_to_bytes(layers[-1]).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise UnsafePathError(
                f"The path {show(path)} contains percent-encoded bytes that are not valid "
                "UTF-8; encode text as UTF-8."
            ) from exc
    return layers


def _layer_problem(layer: str) -> str | None:
    """Why one decoding layer of a path is unsafe, as a phrase, or None."""
    if _SCHEME.match(layer):
        return "is an absolute URL; give only the path below the integration's base URL"
    if layer.startswith("//"):
        return "starts with '//', which names another host"
    if any(unicodedata.category(ch) == "Cc" for ch in layer):
        return "contains a control character"
    folded = unicodedata.normalize("NFKC", layer)
    if "\\" in folded:
        return "contains a backslash"
    if "?" in folded:
        return ("hides a '?' (as %3F or a look-alike), which a server that decodes the path "
                "reads as the start of a query string; pass query parameters in `params` instead")
    if "#" in folded:
        return ("hides a '#' (as %23 or a look-alike), which a server that decodes the path "
                "reads as the start of a fragment; remove it")
    return _segment_problem(folded, layer.startswith("/"))


def _segment_problem(folded: str, rooted: bool) -> str | None:
    """Why the segments of one (NFKC-folded) layer are unsafe, or None.

    Each segment is judged without its `;` parameters, as Tomcat, Jetty and Spring read it.
    """
    segments = folded.split("/")
    bare = [_bare(segment) for segment in segments]
    if any(segment in (".", "..") for segment in segments):
        return "contains a '.' or '..' segment"
    if any(segment in (".", "..") for segment in bare):
        return ("contains a '.' or '..' segment behind ';' path parameters (Tomcat, Jetty and "
                "Spring drop the parameters and step out of the base URL)")
    inner = slice(1, -1) if rooted else slice(0, -1)
    if any(not segment for segment in segments[inner]):
        return "contains an empty segment ('//')"
    if any(not segment for segment in bare[inner]):
        return "contains a segment that is empty without its ';' path parameters ('/;x/')"
    first = segments[1] if rooted and len(segments) > 1 else segments[0]
    if "@" in first:
        return "has '@' in its first segment, which reads like user information (user@host)"
    return None


def _bare(segment: str) -> str:
    """A path segment without its `;` parameters (`..;x=1` -> `..`)."""
    return segment.split(";", 1)[0]
