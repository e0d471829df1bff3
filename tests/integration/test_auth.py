"""OAuth2 tokens shared through a real Redis (db 15, a private key prefix), fetched from a real
local token endpoint that counts the requests it gets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from urllib.parse import parse_qs

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from structlog.testing import capture_logs

from recovery.config.registry import (
    BreakerConfig,
    Integration,
    OAuthConfig,
    RateLimitConfig,
    RetryConfig,
)
from recovery.state.tokens import AuthConfigError, TokenProvider, TokenRefreshError

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"
SECRET = "s3cr3t-client-VALUE"
SECRET_ENV = "TEST_AUTH_INTEGRATION_SECRET"


class TokenEndpoint:
    """A token endpoint on 127.0.0.1 that issues tok-1, tok-2, ... and counts requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.forms: list[dict[str, list[str]]] = []
        self.status = 200
        self.expires_in: float = 3600
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/oauth/token"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                with endpoint._lock:
                    endpoint.requests += 1
                    endpoint.forms.append(form)
                    number = endpoint.requests
                time.sleep(endpoint.delay_s)
                if endpoint.status == 200:
                    body = {
                        "access_token": f"tok-{number}",
                        "token_type": "Bearer",
                        "expires_in": endpoint.expires_in,
                    }
                else:  # a broken endpoint that echoes what it was sent
                    body = {"error": "server_error", "error_description": str(form)}
                payload = json.dumps(body).encode()
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                """Keep the test output quiet."""

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint()
    server.start()
    yield server
    server.stop()




@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def integration_for(endpoint: TokenEndpoint, *, scope: str | None = "read") -> Integration:
    return Integration(
        id="crm",
        name="CRM",
        base_url="http://127.0.0.1:9/",
        timeout_ms=3000,
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
        oauth=OAuthConfig(endpoint.url, "client-1", SECRET_ENV, scope),
    )


def run_together(count: int, work: object) -> list[object]:
    """Run `work()` in `count` threads released at the same moment; results or exceptions."""
    assert callable(work)
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(index: int) -> None:
        barrier.wait(10)
        try:
            results[index] = work()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_two_workers_share_one_cached_token(
    endpoint: TokenEndpoint, client: redis.Redis, prefix: str
) -> None:
    crm = integration_for(endpoint)
    first = TokenProvider(client, key_prefix=prefix)
    second = TokenProvider(redis.Redis.from_url(REDIS_URL), key_prefix=prefix)
    assert first.token_for(crm) == "tok-1"
    assert second.token_for(crm) == "tok-1"
    assert second.auth_headers(crm) == {"Authorization": "Bearer tok-1"}
    assert endpoint.requests == 1
    assert endpoint.forms[0] == {
        "grant_type": ["client_credentials"],
        "client_id": ["client-1"],
        "client_secret": [SECRET],
        "scope": ["read"],
    }


def test_the_cache_expires_before_the_token_does(
    endpoint: TokenEndpoint, client: redis.Redis, prefix: str
) -> None:
    crm = integration_for(endpoint)
    provider = TokenProvider(client, key_prefix=prefix)
    endpoint.expires_in = 31  # cacheable for 1 s: 30 s stay back
    provider.token_for(crm)
    keys = client.scan_iter(match=f"{prefix}oauth:*", count=10_000)  # one SCAN, however full
    [token_key] = [k for k in keys if k.endswith(b":token")]
    assert 900 < client.pttl(token_key) <= 1000
    client.delete(token_key)
    endpoint.expires_in = 30.3  # cacheable for 0.3 s
    assert provider.token_for(crm) == "tok-2"
    assert provider.token_for(crm) == "tok-2"
    time.sleep(0.35)
    assert provider.token_for(crm) == "tok-3"
    assert endpoint.requests == 3


def test_a_token_too_short_lived_to_cache_is_fetched_each_time(
    endpoint: TokenEndpoint, client: redis.Redis, prefix: str
) -> None:
    crm = integration_for(endpoint)
    provider = TokenProvider(client, key_prefix=prefix)
    endpoint.expires_in = 10
    assert [provider.token_for(crm) for _ in range(2)] == ["tok-1", "tok-2"]


def test_concurrent_misses_fetch_once(
    endpoint: TokenEndpoint, client: redis.Redis, prefix: str
) -> None:
    crm = integration_for(endpoint)
    endpoint.delay_s = 0.2
    workers = [TokenProvider(redis.Redis.from_url(REDIS_URL), key_prefix=prefix) for _ in range(2)]
    counter = iter(range(8))
    results = run_together(8, lambda: workers[next(counter) % 2].token_for(crm))
    assert results == ["tok-1"] * 8
    assert endpoint.requests == 1


def test_many_invalidations_of_one_token_refetch_exactly_once(
    endpoint: TokenEndpoint, client: redis.Redis, prefix: str
) -> None:
    crm = integration_for(endpoint)
    workers = [TokenProvider(redis.Redis.from_url(REDIS_URL), key_prefix=prefix) for _ in range(2)]
    assert workers[0].token_for(crm) == "tok-1"
    endpoint.delay_s = 0.05
    counter = iter(range(8))

    def saw_401() -> str | None:
        worker = workers[next(counter) % 2]
        worker.invalidate(crm, "tok-1")
        return worker.token_for(crm)

    assert run_together(8, saw_401) == ["tok-2"] * 8
    assert endpoint.requests == 2


def test_invalidating_a_replaced_token_keeps_the_new_one(
    endpoint: TokenEndpoint, client: redis.Redis, prefix: str
) -> None:
    crm = integration_for(endpoint)
    provider = TokenProvider(client, key_prefix=prefix)
    provider.token_for(crm)
    provider.invalidate(crm, "tok-1")
    assert provider.token_for(crm) == "tok-2"
    provider.invalidate(crm, "tok-1")  # a late 401 from a job that still used tok-1
    assert provider.token_for(crm) == "tok-2"
    assert endpoint.requests == 2


def test_a_missing_secret_says_which_variable_to_set(
    endpoint: TokenEndpoint, client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    provider = TokenProvider(client, key_prefix=prefix)
    with pytest.raises(AuthConfigError, match=f"set the environment variable {SECRET_ENV}"):
        provider.token_for(integration_for(endpoint))
    assert endpoint.requests == 0


def test_a_failing_endpoint_raises_without_the_secret_and_is_asked_once(
    endpoint: TokenEndpoint, client: redis.Redis, prefix: str
) -> None:
    crm = integration_for(endpoint)
    endpoint.status = 500
    endpoint.delay_s = 0.3
    provider = TokenProvider(client, key_prefix=prefix)
    with capture_logs() as logs:
        results = run_together(4, lambda: provider.token_for(crm))
    assert all(isinstance(result, TokenRefreshError) for result in results)
    assert endpoint.requests == 1  # the waiting workers share the failure
    for result in results:
        assert "answered HTTP 500 (server_error)" in str(result)
        assert SECRET not in str(result)
    assert SECRET not in repr(logs)


def test_falls_back_to_an_in_process_cache_when_redis_is_unreachable(
    endpoint: TokenEndpoint,
) -> None:
    crm = integration_for(endpoint)
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    provider = TokenProvider(dead, key_prefix="test:unreachable:")
    with capture_logs() as logs:
        assert provider.token_for(crm) == "tok-1"
        assert provider.token_for(crm) == "tok-1"
        provider.invalidate(crm, "tok-1")
        assert provider.token_for(crm) == "tok-2"
    assert endpoint.requests == 2
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == [
        "redis_unavailable"
    ]
