"""Secret redaction tables: headers, query parameters, URLs, JSON bodies and free text."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recovery.redact import (
    REDACTED,
    redact_body,
    redact_headers,
    redact_params,
    redact_text,
    redact_url,
    scrub_passes,
)

SECRET_HEADERS = [
    "Authorization", "authorization", "Proxy-Authorization", "Cookie", "Set-Cookie",
    "X-Api-Key", "Api-Key", "X-Auth-Token", "X-Amz-Security-Token", "X-Client-Secret",
    "X-Password", "X-APIKEY", "X-Session-Id", "Refresh-Token",
]
PLAIN_HEADERS = ["Accept", "Content-Type", "User-Agent", "Idempotency-Key", "X-Request-Id"]


@pytest.mark.parametrize("name", SECRET_HEADERS)
def test_secret_headers_are_redacted(name: str) -> None:
    assert redact_headers({name: "s3cr3t"}) == {name: REDACTED}


@pytest.mark.parametrize("name", PLAIN_HEADERS)
def test_plain_headers_are_kept(name: str) -> None:
    assert redact_headers({name: "value"}) == {name: "value"}


@pytest.mark.parametrize(
    "name",
    ["token", "access_token", "refresh_token", "api_key", "apikey", "key", "secret", "password",
     "signature", "sig", "auth", "code", "TOKEN", "client_secret", "id_token", "X-Amz-Signature"],
)
def test_secret_params_are_redacted(name: str) -> None:
    assert redact_params({name: "s3cr3t", "page": 2}) == {name: REDACTED, "page": 2}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/p?token=abc&page=2", "https://h/p?token=[REDACTED]&page=2"),
        ("https://h/p?page=2&api_key=abc", "https://h/p?page=2&api_key=[REDACTED]"),
        ("https://h/p?Access_Token=abc", "https://h/p?Access_Token=[REDACTED]"),
        ("https://h/cb?code=xyz&state=s", "https://h/cb?code=[REDACTED]&state=s"),
        ("https://user:pw@h/p", "https://[REDACTED]@h/p"),
        ("https://apikey@h/p", "https://[REDACTED]@h/p"),
        ("https://h/p#access_token=abc&x=1", "https://h/p#access_token=[REDACTED]&x=1"),
        ("https://h/p?q=a+b&flag", "https://h/p?q=a+b&flag"),
        ("/orders/42?sig=abc", "/orders/42?sig=[REDACTED]"),
        ("https://h/p", "https://h/p"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_survives_unparsable_urls() -> None:
    assert "pw" not in redact_url("http://user:pw@[::1/x?token=abc")


def test_redact_body_recursive() -> None:
    body = {
        "user": "bob",
        "password": "hunter2",
        "Card-Number": "4111111111111111",
        "cvv": "123",
        "nested": [{"clientSecret": "x", "api-key": "y", "amount": 10}, ("passwd", "keep")],
        "auth": {"authorization": "Basic abc", "scope": "read"},
        "note": "sent with Authorization: Bearer abcdef123456",
        3: "int keys work",
    }
    assert redact_body(body) == {
        "user": "bob",
        "password": REDACTED,
        "Card-Number": REDACTED,
        "cvv": REDACTED,
        "nested": [{"clientSecret": REDACTED, "api-key": REDACTED, "amount": 10},
                   ("passwd", "keep")],
        "auth": {"authorization": REDACTED, "scope": "read"},
        "note": "sent with Authorization: [REDACTED]",
        3: "int keys work",
    }


@pytest.mark.parametrize("key", ["token", "access_token", "API_KEY", "apiKey", "private_key",
                                 "pin", "ssn", "x-session-token", "cvc", "Secret"])
def test_redact_body_keys(key: str) -> None:
    assert redact_body({key: "v"}) == {key: REDACTED}


@pytest.mark.parametrize("value", [None, 1, 2.5, True, "plain", [], {}])
def test_redact_body_leaves_plain_values(value: Any) -> None:
    assert redact_body({"value": value}) == {"value": value}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: [REDACTED]"),
        ("got 401 with Bearer eyJhbGciOi.x.y", "got 401 with Bearer [REDACTED]"),
        ("Basic dXNlcjpwYXNz rejected", "Basic [REDACTED] rejected"),
        ("token=abc123&page=2", "token=[REDACTED]&page=2"),
        ("password=hunter2 for bob", "password=[REDACTED] for bob"),
        ("api_key: sk_live_123", "api_key: [REDACTED]"),
        ("x-api-key=abc", "x-api-key=[REDACTED]"),
        ('{"password": "correct horse", "user": "bob"}',
         '{"password": "[REDACTED]", "user": "bob"}'),
        ("{'client_secret': 'abc'}", "{'client_secret': '[REDACTED]'}"),
        ("see https://user:pw@host/x?access_token=zzz&page=2",
         "see https://[REDACTED]@host/x?access_token=[REDACTED]&page=2"),
        ("dsn postgresql://app:pw@db:5432/x failed",
         "dsn postgresql://[REDACTED]@db:5432/x failed"),
        ("HTTP 503 Service Unavailable, status code: 503", "HTTP 503 Service Unavailable, "
         "status code: 503"),
        ("author: bob", "author: bob"),
        ("the token expired", "the token expired"),
        ("", ""),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_nothing_is_mutated() -> None:
    body = {"password": "x", "list": [{"token": "y"}]}
    headers = {"Authorization": "Bearer z"}
    params = {"token": "t"}
    before = copy.deepcopy((body, headers, params))
    redact_body(body)
    redact_headers(headers)
    redact_params(params)
    assert (body, headers, params) == before


_PIECES = [*"abcXYZ019 =:&?/@\"'{}-_.[]", "token", "Bearer ", "password", "https://",
           "api_key", "Basic ", "[REDACTED]"]
_texty = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join)


@given(_texty)
def test_redact_text_is_idempotent(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


@given(secret=st.from_regex(r"[A-Za-z0-9]{8,20}", fullmatch=True),
       key=st.sampled_from(["token", "password", "api_key", "secret", "access_token"]),
       sep=st.sampled_from(["=", ": ", ":", " = "]))
def test_secret_values_never_survive(secret: str, key: str, sep: str) -> None:
    for text in (f"{key}{sep}{secret}", f"error ({key}{sep}{secret}) retry",
                 f"https://h/x?{key}={secret}", f"Bearer {secret}"):
        assert secret not in redact_text(text)


_TRICKY = [*_PIECES, "\u0131d", "\u017fecret", "\u212aey", "PASSWD", "SeSsIoN_Id", "AUTH",
           "cookie", "pwd", "sessid", "Negotiate ", "DIGEST ", "user:pw@", "ftp://", "signature",
           "x-amz-"]


@given(st.lists(st.one_of(st.sampled_from(_TRICKY), st.text(max_size=8)), max_size=25)
       .map("".join))
def test_the_quick_trigger_test_never_skips_a_redaction(text: str) -> None:
    assert redact_text(text) == scrub_passes(text)
