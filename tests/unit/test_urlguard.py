"""The SSRF guard: tables of refused and accepted paths, and a property over any text."""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote, urlsplit

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests.utils import unquote_unreserved

from recovery.config.urlguard import (
    MAX_HEADERS,
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
    "dotdot with parameter": "/..;/admin",
    "encoded dotdot with parameter": "/%2e%2e;/admin",
    "dotdot with encoded semicolon": "/..%3b/admin",
    "dotdot with encoded semicolon upper": "/..%3B/admin",
    "dotdot with double encoded semicolon": "/..%253b/admin",
    "dot with parameter": "/a/.;x=1/b",
    "inner dotdot with parameter": "/a/..;jsessionid=1/b",
    "trailing dotdot with parameter": "/a/..;",
    "dotdot with fullwidth semicolon": "/..\uff1b/admin",
    "empty with parameter": "/a/;x/b",
    "encoded question mark": "/a%3Fb",
    "encoded question mark lower": "/a%3fb",
    "double encoded question mark": "/a%253Fb",
    "fullwidth question mark": "/a\uff1fb",
    "encoded hash": "/a%23b",
    "double encoded hash": "/a%2523b",
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
    "/cars;color=red/2024": "/cars;color=red/2024",
    "/items;v=1": "/items;v=1",
    "/;jsessionid=abc": "/;jsessionid=abc",
    "/a..;b/c": "/a..;b/c",
    "/x%3by": "/x%3by",
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
        "http://h:8080/api/v1/..;/x",  # dot segment with a path parameter
        "http://h:8080/api/v1/..%3b/x",  # ... with an encoded one
        "http://h:8080/api/v1/%252e%252e%253bx/y",  # ... encoded twice
        "http://h:8080/api/v1/a%3Fb",  # encoded query
        "http://h:8080/api/v1/a%2523b",  # encoded fragment, twice
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


FRAMING = ["Host", "host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
           "TE", "Trailer", "Upgrade"]


@pytest.mark.parametrize("name", FRAMING)
def test_framing_and_hop_by_hop_headers_are_refused(name: str) -> None:
    with pytest.raises(UnsafeHeaderError) as caught:
        validate_headers({name: "x"})
    assert str(caught.value) == (
        f"The header {name!r} frames the message or steers the connection, which the HTTP "
        "client does itself from the base URL and the body; remove it.")


@pytest.mark.parametrize("name", ["Proxy-Authorization", "proxy-connection", "Proxy-X"])
def test_proxy_headers_are_refused(name: str) -> None:
    with pytest.raises(UnsafeHeaderError) as caught:
        validate_headers({name: "x"})
    assert str(caught.value) == (
        f"The header {name!r} is addressed to a proxy, not to the integration's API; remove it.")


def test_a_name_given_twice_in_different_case_is_refused() -> None:
    with pytest.raises(UnsafeHeaderError) as caught:
        validate_headers({"X-Team": "a", "x-team": "b"})
    assert str(caught.value) == (
        "The header 'x-team' is given twice (also as 'X-Team'); give it once.")


def test_at_most_64_headers() -> None:
    sixty_four = {f"X-H{number}": "v" for number in range(MAX_HEADERS)}
    assert validate_headers(sixty_four) == sixty_four
    with pytest.raises(UnsafeHeaderError) as caught:
        validate_headers({**sixty_four, "X-One-More": "v"})
    assert str(caught.value) == "There are 65 headers; the limit is 64. Send fewer headers."


def test_names_and_values_up_to_8_kib() -> None:
    assert validate_headers({"X-" + "n" * 8190: "v" * 8192})
    with pytest.raises(UnsafeHeaderError) as value_error:
        validate_headers({"X-Big": "v" * 8193})
    assert str(value_error.value) == (
        "The value of header 'X-Big' is 8193 characters long; the limit is 8192 bytes (8 KiB). "
        "Send large data in the body.")
    with pytest.raises(UnsafeHeaderError) as name_error:
        validate_headers({"X-" + "n" * 8191: "v"})
    assert str(name_error.value).startswith("The header name 'X-nnn")
    assert str(name_error.value).endswith(" is 8193 bytes long; the limit is 8192 bytes (8 KiB).")


def test_a_non_ascii_value_is_refused_with_a_sentence() -> None:
    with pytest.raises(UnsafeHeaderError) as caught:
        validate_headers({"X-City": "Zürich"})
    assert str(caught.value) == (
        "The value of header 'X-City' contains characters outside visible ASCII ('Zürich'); "
        "header values may hold only visible ASCII, spaces and tabs, so percent-encode or "
        "base64-encode other text.")


def test_headers_must_be_a_mapping() -> None:
    with pytest.raises(UnsafeHeaderError, match="must be a mapping"):
        validate_headers([("X-A", "b")])  # type: ignore[arg-type]


@given(st.text(alphabet=st.characters(max_codepoint=0x2030), max_size=30))
@example("tab\tinside")
@example("del\x7f")
@example("nbsp\x85 is a C1 control")
@example("latin-1 \xe9")
@example("\u20ac not latin-1")
def test_a_header_value_is_refused_exactly_when_it_holds_more_than_visible_ascii(
        value: str) -> None:
    controls = [ch for ch in value if (ord(ch) < 32 and ch != "\t") or ord(ch) == 127]
    outside = [ch for ch in value if ord(ch) > 126]
    if controls:
        with pytest.raises(UnsafeHeaderError, match="line break or control character"):
            validate_headers({"X-A": value})
    elif outside:
        with pytest.raises(UnsafeHeaderError, match="outside visible ASCII"):
            validate_headers({"X-A": value})
    else:
        assert validate_headers({"X-A": value}) == {"X-A": value.strip(" \t")}
        value.strip(" \t").encode("latin-1")  # what http.client does with it at send time


_PIECES = [
    "..", ".", "%2e", "%2E", "%25", "2e", "/", "\\", "%5c", "%2f", "%2F", "@", ":", "http:",
    "//", "?", "#", "a", "b1", "ü", " ", "\x00", "%00", "%0d", "\u2024", "\uff0e", "\uff0f",
    "%", "%c0", "%ae", "~", "evil.example", "[", "]", "%40",
    ";", "%3b", "%3B", "%253b", "\uff1b", "=", "..;", ";x=1", "%3f", "%3F", "%253F", "%23",
    "%2523", "\uff1f", "\uff03",
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
        _assert_no_layer_escapes(parsed.path)
    assert is_inside(base, url)


def _assert_no_layer_escapes(path: str) -> None:
    """However often a server decodes the path, and whether it drops `;` parameters before or
    after decoding (Tomcat, Jetty, Spring) or not at all, no layer steps up or starts a query."""
    layer, decoded = path, 0
    while True:
        folded = unicodedata.normalize("NFKC", layer)
        for segment in folded.split("/"):
            assert segment not in (".", "..")
            assert segment.split(";", 1)[0] not in (".", "..")
        assert decoded == 0 or ("?" not in folded and "#" not in folded)
        stripped = "/".join(segment.split(";", 1)[0] for segment in layer.split("/"))
        assert all(s not in (".", "..") for s in unquote(stripped).split("/"))
        following = unquote(layer)
        if following == layer:
            return
        layer, decoded = following, decoded + 1


def _prepared(url: str) -> str:
    prepared = requests.PreparedRequest()
    prepared.prepare(method="GET", url=url)
    assert prepared.url is not None
    return prepared.url


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.one_of(st.text(max_size=60), _tricky_paths), base=st.sampled_from(BASES))
@example(path="%2e%2e", base=BASES[0])
@example(path="a/%2E%2e/b", base=BASES[1])
@example(path="/..;/admin", base=BASES[0])
@example(path="/%2e%2e;/admin", base=BASES[0])
@example(path="/..%3b/admin", base=BASES[1])
@example(path="/a%3Fb", base=BASES[2])
def test_any_path_is_refused_or_stays_under_base(path: str, base: str) -> None:
    try:
        url = join_url(base, path)
    except UnsafePathError:
        return
    _assert_under(base, url)


_DOTS = ["..", ".", "%2e%2e", "%2E.", ".%2e", "%252e%252e", "\uff0e\uff0e"]
_PARAMS = [";", ";x=1", "%3b", "%3B", "%3bx", "%253b", "%25253b", "\uff1b", ";a;b"]


@settings(max_examples=300)
@given(before=st.lists(st.sampled_from(["a", "b1", "v;x=1"]), max_size=3),
       dots=st.sampled_from(_DOTS), param=st.sampled_from(_PARAMS),
       after=st.lists(st.sampled_from(["admin", "c"]), max_size=3),
       base=st.sampled_from(BASES))
def test_a_dot_segment_behind_path_parameters_is_refused_in_every_form(
        before: list[str], dots: str, param: str, after: list[str], base: str) -> None:
    path = "/" + "/".join([*before, dots + param, *after])
    with pytest.raises(UnsafePathError, match=r"'\.' or '\.\.' segment"):
        join_url(base, path)


@settings(max_examples=200)
@given(char=st.sampled_from(["%3F", "%3f", "%253F", "%25253f", "\uff1f", "%23", "%2523",
                             "\uff03"]),
       head=st.sampled_from(["/a", "/a/b", "/"]), tail=st.sampled_from(["", "x=1", "/c"]))
def test_a_decoded_question_mark_or_hash_is_refused(char: str, head: str, tail: str) -> None:
    with pytest.raises(UnsafePathError, match=r"hides a '[?#]'"):
        validate_path(head + char + tail)


def test_path_parameter_messages() -> None:
    with pytest.raises(UnsafePathError) as dots:
        validate_path("/..;/admin")
    assert str(dots.value) == (
        "The path '/..;/admin' was refused: it contains a '.' or '..' segment behind ';' path "
        "parameters (Tomcat, Jetty and Spring drop the parameters and step out of the base "
        "URL).")
    with pytest.raises(UnsafePathError) as query:
        validate_path("/a%3Fadmin=1")
    assert str(query.value) == (
        "The path '/a%3Fadmin=1' was refused: it hides a '?' (as %3F or a look-alike), which a "
        "server that decodes the path reads as the start of a query string; pass query "
        "parameters in `params` instead.")
    with pytest.raises(UnsafePathError) as fragment:
        validate_path("/a%23b")
    assert str(fragment.value) == (
        "The path '/a%23b' was refused: it hides a '#' (as %23 or a look-alike), which a "
        "server that decodes the path reads as the start of a fragment; remove it.")
    with pytest.raises(UnsafePathError) as empty:
        validate_path("/a/;x/b")
    assert str(empty.value) == (
        "The path '/a/;x/b' was refused: it contains a segment that is empty without its ';' "
        "path parameters ('/;x/').")


def test_matrix_parameters_are_sent_as_given() -> None:
    url = join_url("https://h/api", "/cars;color=red/2024")
    assert url == "https://h/api/cars;color=red/2024"
    assert _prepared(url) == url
    _assert_under("https://h/api", url)
