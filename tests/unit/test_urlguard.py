"""The SSRF guard: tables of refused and accepted paths, and a property over any text."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests.utils import unquote_unreserved

from recovery.urlguard import (
    InvalidBaseURLError,
    UnsafeHeaderError,
    UnsafePathError,
    is_inside,
    join_url,
    validate_headers,
    validate_path,
)

BASES = ["http://api.example.com:8080/api/v1", "https://api.example.com/", "http://127.0.0.1:9"]

REFUSED = {
    "absolute http": "http://evil.example/x",
    "absolute https": "https://evil.example",
    "javascript": "javascript:alert(1)",
    "file": "file:///etc/passwd",
    "scheme relative": "//evil.example/x",
    "dotdot": "/a/../b",
    "leading dotdot": "../secret",
    "trailing dotdot": "/a/..",
    "dot": "/a/./b",
    "encoded dotdot": "/%2e%2e/admin",
    "encoded upper": "/%2E%2E/admin",
    "mixed encoded": "/.%2e/admin",
    "mixed encoded other": "/%2E./admin",
    "double encoded": "/%252e%252e/admin",
    "triple encoded": "/%25252e%25252e/admin",
    "encoded slash traversal": "/a%2f..%2fadmin",
    "fullwidth dots": "/\uff0e\uff0e/admin",
    "one dot leaders": "/\u2024\u2024/admin",
    "backslash": "/a\\..\\b",
    "plain backslash": "/a\\b",
    "encoded backslash": "/a%5cb",
    "encoded backslash lower": "/a%5Cb",
    "crlf": "/a\r\nHost: evil",
    "encoded crlf": "/a%0d%0aHost:%20evil",
    "nul": "/a\x00b",
    "encoded nul": "/a%00b",
    "del": "/a\x7fb",
    "c1 control": "/a\x85b",
    "tab": "/a\tb",
    "userinfo first segment": "@evil.example/x",
    "userinfo encoded": "%40evil.example/x",
    "empty": "",
    "query": "/a?token=1",
    "fragment": "/a#frag",
    "empty segment": "/a//b",
    "overlong utf8 dot": "/%c0%ae%c0%ae/admin",
    "too long": "/" + "a" * 2048,
    "encoded scheme": "http%3A%2F%2Fevil.example",
    "deep encoding": "/%2525252525252e",
}

ACCEPTED = {
    "/orders": "/orders",
    "orders/42": "/orders/42",
    "/": "/",
    "/users/@me": "/users/@me",
    "/v1/things:batchGet": "/v1/things:batchGet",
    "/files/a.b.c": "/files/a.b.c",
    "/dots/...": "/dots/...",
    "/trailing/": "/trailing/",
    "/naïve café": "/naïve café",
    "/discount%2550": "/discount%2550",
    "/" + "a" * 2047: "/" + "a" * 2047,
}


@pytest.mark.parametrize("path", REFUSED.values(), ids=REFUSED.keys())
def test_refused_paths(path: str) -> None:
    with pytest.raises(UnsafePathError):
        validate_path(path)


@pytest.mark.parametrize(("path", "normalised"), ACCEPTED.items())
def test_accepted_paths(path: str, normalised: str) -> None:
    assert validate_path(path) == normalised


def test_query_string_message_points_to_params() -> None:
    with pytest.raises(UnsafePathError, match="params"):
        validate_path("/search?q=1")


def test_message_is_escaped_and_truncated() -> None:
    with pytest.raises(UnsafePathError) as info:
        validate_path("/a\r\n" + "x" * 500 + "/../")
    message = str(info.value)
    assert "\r" not in message and "\n" not in message
    assert "\\r\\n" in message
    assert len(message) < 400


def test_non_text_path_is_refused() -> None:
    with pytest.raises(UnsafePathError, match="text"):
        validate_path(b"/a")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("http://h:8080/api/v1", "/orders", "http://h:8080/api/v1/orders"),
        ("http://h:8080/api/v1/", "orders", "http://h:8080/api/v1/orders"),
        ("https://h", "/", "https://h/"),
        ("https://h", "/a b/ü", "https://h/a%20b/%C3%BC"),
        ("https://h", "/100%", "https://h/100%25"),
        ("https://h", "/x%2Fy", "https://h/x%2Fy"),
        ("https://h/p", "/users/@me", "https://h/p/users/@me"),
    ],
)
def test_join_url(base: str, path: str, expected: str) -> None:
    assert join_url(base, path) == expected
    assert is_inside(base, expected)


@pytest.mark.parametrize(
    "base",
    ["ftp://h/x", "h/x", "http://", "http://user:pw@h/", "http://h/?a=1", "http://h/#f",
     "http://h:notaport/"],
)
def test_join_url_refuses_bad_base(base: str) -> None:
    with pytest.raises(InvalidBaseURLError):
        join_url(base, "/a")


@pytest.mark.parametrize(
    "url",
    [
        "http://h:8080/api/v2/x",  # other prefix
        "http://h:8080/api/v1",  # the prefix itself, not below it
        "http://h:8080/api/v10/x",  # shares the prefix's characters only
        "http://h:8081/api/v1/x",  # other port
        "https://h:8080/api/v1/x",  # other scheme
        "http://evil:8080/api/v1/x",  # other host
        "http://h:8080@evil/api/v1/x",  # userinfo trick
        "http://h:8080/api/v1/../../x",  # dot segments
        "http://h:8080/api/v1/%2e%2e/x",  # encoded dot segments
        "http://[::1/api/v1/x",  # unparsable
    ],
)
def test_is_inside_rejects(url: str) -> None:
    assert not is_inside("http://h:8080/api/v1", url)


def test_is_inside_default_ports() -> None:
    assert is_inside("https://h/api", "https://h:443/api/x")
    assert not is_inside("https://h/api", "https://h:8443/api/x")


def test_validate_headers_trims_and_copies() -> None:
    given_headers = {"X-Trace": "  abc\t", "Accept": "application/json"}
    assert validate_headers(given_headers) == {"X-Trace": "abc", "Accept": "application/json"}
    assert given_headers["X-Trace"] == "  abc\t"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "a\r\nSet-Cookie: x"},
        {"X-A": "a\nb"},
        {"X-A": "a\x00b"},
        {"Bad Name": "v"},
        {"X-A:": "v"},
        {"": "v"},
        {"X-\u00e9": "v"},
        {"X-A": 3},
    ],
)
def test_validate_headers_refuses(headers: dict[str, object]) -> None:
    with pytest.raises(UnsafeHeaderError):
        validate_headers(headers)  # type: ignore[arg-type]


@given(st.text(alphabet=st.characters(max_codepoint=0x2030), max_size=30))
@example("tab\tinside")
@example("del\x7f")
@example("nbsp\x85 is not a C0 control")
def test_a_header_value_is_refused_exactly_when_it_holds_a_control_character(value: str) -> None:
    controls = [ch for ch in value if (ord(ch) < 32 and ch != "\t") or ord(ch) == 127]
    if controls:
        with pytest.raises(UnsafeHeaderError, match="line break or control character"):
            validate_headers({"X-A": value})
    else:
        assert validate_headers({"X-A": value}) == {"X-A": value.strip(" \t")}


_PIECES = [
    "..", ".", "%2e", "%2E", "%25", "2e", "/", "\\", "%5c", "%2f", "%2F", "@", ":", "http:",
    "//", "?", "#", "a", "b1", "ü", " ", "\x00", "%00", "%0d", "\u2024", "\uff0e", "\uff0f",
    "%", "%c0", "%ae", "~", "evil.example", "[", "]", "%40",
]
_tricky_paths = st.lists(st.sampled_from(_PIECES), max_size=12).map("".join)


def _assert_under(base: str, url: str) -> None:
    root = urlsplit(base)
    prefix = root.path.rstrip("/") + "/"
    for parsed in (urlsplit(url), urlsplit(_prepared(url))):
        assert parsed.scheme == root.scheme
        assert parsed.hostname == root.hostname
        assert parsed.port == root.port
        assert parsed.username is None and parsed.password is None
        assert parsed.path.startswith(prefix)
        assert not parsed.query and not parsed.fragment
        segments = unquote_unreserved(parsed.path).split("/")
        assert "." not in segments and ".." not in segments
    assert is_inside(base, url)


def _prepared(url: str) -> str:
    prepared = requests.PreparedRequest()
    prepared.prepare(method="GET", url=url)
    assert prepared.url is not None
    return prepared.url


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.one_of(st.text(max_size=60), _tricky_paths), base=st.sampled_from(BASES))
@example(path="%2e%2e", base=BASES[0])
@example(path="a/%2E%2e/b", base=BASES[1])
def test_any_path_is_refused_or_stays_under_base(path: str, base: str) -> None:
    try:
        url = join_url(base, path)
    except UnsafePathError:
        return
    _assert_under(base, url)
