"""OAuth2 client-credentials: the token request, the parsing of answers, the in-process cache."""

from __future__ import annotations

import time
from types import MappingProxyType
from urllib.parse import parse_qs

import pytest
import requests
import responses
from hypothesis import given
from hypothesis import strategies as st

from recovery.config.registry import (
    BreakerConfig,
    Integration,
    OAuthConfig,
    RateLimitConfig,
    RetryConfig,
)
from recovery.state.tokens import (
    DEFAULT_EXPIRES_IN_S,
    AuthConfigError,
    IssuedToken,
    TokenProvider,
    TokenRefreshError,
    fetch_token,
)

TOKEN_URL = "https://auth.example.test/oauth/token"
SECRET = "s3cr3t-client-VALUE"
SECRET_ENV = "TEST_AUTH_CLIENT_SECRET"


def make_integration(*, oauth: OAuthConfig | None = None, timeout_ms: int = 4000) -> Integration:
    return Integration(
        id="crm",
        name="CRM",
        base_url="https://crm.example.test",
        timeout_ms=timeout_ms,
        retry=RetryConfig(
            max_attempts=3, initial_delay_ms=100, backoff_factor=2, max_delay_ms=1000, jitter=0
        ),
        circuit_breaker=BreakerConfig(
            enabled=True, threshold=5, reset_timeout_ms=30_000, call_timeout_ms=5_000
        ),
        fallbacks=(),
        health_check=None,
        rate_limit=RateLimitConfig(window_ms=60_000, max_requests=100),
        headers=MappingProxyType({}),
        oauth=oauth,
    )


OAUTH = OAuthConfig(
    token_url=TOKEN_URL, client_id="client-1", client_secret_env=SECRET_ENV, scope="read write"
)
CRM = make_integration(oauth=OAUTH)


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def token_reply(token: str = "tok-1", expires_in: object = 3600) -> responses.Response:
    body = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
    return responses.Response(responses.POST, TOKEN_URL, json=body)


def test_cache_lifetime_keeps_the_larger_of_30_seconds_and_10_percent_back() -> None:
    assert IssuedToken("t", 3600).cache_for_s == 3240
    assert IssuedToken("t", 100).cache_for_s == 70
    assert IssuedToken("t", 20).cache_for_s == -10


@given(st.floats(min_value=0.001, max_value=1e7, allow_nan=False))
def test_a_token_is_never_cached_into_its_last_30_seconds_or_last_tenth(expires_in: float) -> None:
    cache_for = IssuedToken("t", expires_in).cache_for_s
    assert cache_for <= expires_in - 30
    assert cache_for <= expires_in * 0.9 + 1e-6


def test_the_token_value_stays_out_of_reprs() -> None:
    assert "tok-secret" not in repr(IssuedToken("tok-secret", 60))


@responses.activate
def test_fetch_posts_the_client_credentials_grant() -> None:
    responses.add(token_reply(expires_in=120))
    issued = fetch_token(CRM)
    assert (issued.value, issued.expires_in_s) == ("tok-1", 120)
    request = responses.calls[0].request
    assert parse_qs(str(request.body)) == {
        "grant_type": ["client_credentials"],
        "client_id": ["client-1"],
        "client_secret": [SECRET],
        "scope": ["read write"],
    }
    assert responses.calls[0].request.req_kwargs["timeout"] == 4.0


@responses.activate
def test_fetch_leaves_scope_out_when_none_is_configured() -> None:
    responses.add(token_reply())
    fetch_token(make_integration(oauth=OAuthConfig(TOKEN_URL, "client-1", SECRET_ENV)))
    assert "scope" not in parse_qs(str(responses.calls[0].request.body))


@responses.activate
def test_a_missing_secret_is_a_configuration_error_and_nothing_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(AuthConfigError) as caught:
        fetch_token(CRM)
    assert str(caught.value) == (
        "The OAuth client secret of integration 'crm' is missing: set the environment variable "
        f"{SECRET_ENV} for every worker."
    )
    assert len(responses.calls) == 0


@responses.activate
def test_a_refused_grant_names_the_status_and_oauth_error_but_not_the_secret() -> None:
    body = {"error": "invalid_client", "error_description": f"bad secret {SECRET}"}
    responses.add(responses.POST, TOKEN_URL, status=401, json=body)
    with pytest.raises(TokenRefreshError) as caught:
        fetch_token(CRM)
    message = str(caught.value)
    assert "answered HTTP 401 (invalid_client)" in message
    assert SECRET_ENV in message
    assert SECRET not in message


@responses.activate
def test_an_unreachable_endpoint_is_a_refresh_error_without_chained_details() -> None:
    responses.add(responses.POST, TOKEN_URL, body=requests.ConnectionError(f"boom {SECRET}"))
    with pytest.raises(
        TokenRefreshError, match=r"Could not reach .* \(ConnectionError\)"
    ) as caught:
        fetch_token(CRM)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@responses.activate
def test_redirects_are_not_followed_so_the_secret_stays_put() -> None:
    responses.add(responses.POST, TOKEN_URL, status=307, headers={"Location": "https://evil.test/"})
    with pytest.raises(TokenRefreshError, match="HTTP 307"):
        fetch_token(CRM)
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"token_type": "Bearer"}, "without a usable access_token"),
        ({"access_token": "has space", "token_type": "Bearer"}, "without a usable access_token"),
        ({"access_token": "t", "token_type": "mac"}, "of type 'mac'"),
        ({"access_token": "t", "expires_in": -5}, "expires_in that is not a positive number"),
        ({"access_token": "t", "expires_in": "soon"}, "expires_in that is not a positive number"),
        ({"access_token": "t", "expires_in": True}, "expires_in that is not a positive number"),
        (["not", "an", "object"], "without a usable access_token"),
    ],
)
@responses.activate
def test_unusable_answers_are_refresh_errors(body: object, expected: str) -> None:
    responses.add(responses.POST, TOKEN_URL, json=body)
    with pytest.raises(TokenRefreshError, match=expected):
        fetch_token(CRM)


@responses.activate
def test_expires_in_may_be_a_string_or_missing() -> None:
    responses.add(token_reply(expires_in="90"))
    responses.add(responses.POST, TOKEN_URL, json={"access_token": "t2", "token_type": "bearer"})
    assert fetch_token(CRM).expires_in_s == 90
    assert fetch_token(CRM).expires_in_s == DEFAULT_EXPIRES_IN_S


def test_integrations_without_oauth_get_no_token_and_no_header() -> None:
    provider = TokenProvider(None, key_prefix="unused:")
    plain = make_integration()
    assert provider.token_for(plain) is None
    assert provider.auth_headers(plain) == {}
    provider.invalidate(plain, "anything")  # a no-op, not an error


@responses.activate
def test_in_process_cache_reuses_the_token_until_invalidated() -> None:
    responses.add(token_reply("tok-1"))
    responses.add(token_reply("tok-2"))
    provider = TokenProvider(None, key_prefix="unused:")
    assert provider.auth_headers(CRM) == {"Authorization": "Bearer tok-1"}
    assert provider.token_for(CRM) == "tok-1"
    assert len(responses.calls) == 1
    provider.invalidate(CRM, "some-older-token")
    assert provider.token_for(CRM) == "tok-1"
    provider.invalidate(CRM, "tok-1")
    provider.invalidate(CRM, "tok-1")
    assert provider.token_for(CRM) == "tok-2"
    assert len(responses.calls) == 2


@responses.activate
def test_in_process_cache_honours_expiry() -> None:
    responses.add(token_reply("tok-1", expires_in=30.2))  # cacheable for 0.2 s
    responses.add(token_reply("tok-2", expires_in=5))  # too short-lived to cache at all
    responses.add(token_reply("tok-3", expires_in=5))
    provider = TokenProvider(None, key_prefix="unused:")
    assert provider.token_for(CRM) == "tok-1"
    assert provider.token_for(CRM) == "tok-1"
    time.sleep(0.25)
    assert provider.token_for(CRM) == "tok-2"
    assert provider.token_for(CRM) == "tok-3"
    assert len(responses.calls) == 3
