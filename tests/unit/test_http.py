"""The outbound call: pooled sessions, guarded URLs, no redirects, no urllib3 retries, timeouts."""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest
import requests
import responses
from requests.adapters import HTTPAdapter

from recovery.config.registry import (
    BreakerConfig,
    Integration,
    RateLimitConfig,
    RetryConfig,
)
from recovery.config.urlguard import UnsafeHeaderError, UnsafePathError
from recovery.core.errors import ResponseDeadlineError, ResponseTooLargeError
from recovery.demo.faultserver import FaultServer
from recovery.engine import http

BASE = "https://api.example.test/v1"


def make_integration(
    base_url: str = BASE, *, id: str = "shop", timeout_ms: int = 2500,
    headers: Mapping[str, str] | None = None,
) -> Integration:
    return Integration(
        id=id, name=id.title(), base_url=base_url, timeout_ms=timeout_ms,
        retry=RetryConfig(max_attempts=3, initial_delay_ms=100, backoff_factor=2,
                          max_delay_ms=1000, jitter=0.0),
        circuit_breaker=BreakerConfig(enabled=True, threshold=5, reset_timeout_ms=1000,
                                      call_timeout_ms=2000),
        fallbacks=(), health_check=None,
        rate_limit=RateLimitConfig(window_ms=1000, max_requests=100),
        headers=dict(headers or {}), oauth=None,
    )


@pytest.fixture(autouse=True)
def fresh_sessions() -> Iterator[None]:
    http.close_sessions()
    yield
    http.close_sessions()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def test_session_is_pooled_per_origin_and_reused() -> None:
    session = http.session_for(BASE)
    assert http.session_for(BASE) is session
    assert http.session_for("HTTPS://API.example.test/other") is session
    assert http.session_for("https://api.example.test:8443/v1") is not session
    assert http.session_for("http://api.example.test/v1") is not session
    adapter = session.get_adapter("https://api.example.test/")
    assert isinstance(adapter, HTTPAdapter)
    # One kept connection per job thread (WORKER_CONCURRENCY, 64 by default).
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 64
    assert adapter.max_retries.total == 0
    assert adapter.max_retries.redirect == 0
    assert adapter.max_retries.raise_on_redirect is False


def test_sessions_hold_no_credentials(mocked: responses.RequestsMock) -> None:
    """Two integrations on one origin share the pool, never each other's headers."""
    mocked.get(f"{BASE}/a")
    first = make_integration(headers={"Authorization": "Bearer one"})
    second = make_integration(id="crm", headers={"X-Api-Key": "two"})
    http.send(first, "GET", "/a")
    http.send(second, "GET", "/a")
    assert "Authorization" not in http.session_for(BASE).headers
    one, two = (call.request.headers for call in mocked.calls)
    assert one["Authorization"] == "Bearer one" and "X-Api-Key" not in one
    assert two["X-Api-Key"] == "two" and "Authorization" not in two


def test_session_is_rebuilt_after_fork() -> None:
    shop = BASE
    parent_session = http.session_for(shop)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report whether it got a fresh session, then leave at once
        fresh = http.session_for(shop) is not parent_session
        os.write(write_end, b"fresh" if fresh else b"shared")
        os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == b"fresh"
    assert http.session_for(shop) is parent_session


def test_send_joins_under_base_with_headers(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{BASE}/orders/42", json={"ok": True})
    shop = make_integration(headers={"X-Api-Key": "k", "Accept": "application/json"})
    response = http.send(shop, "post", "orders/42", json={"n": 1}, params={"page": 2},
                         headers={"Idempotency-Key": "abc"})
    assert response.json() == {"ok": True}
    sent = mocked.calls[0].request
    assert sent.url == f"{BASE}/orders/42?page=2"
    assert sent.method == "POST"
    assert sent.headers["X-Api-Key"] == "k"
    assert sent.headers["Idempotency-Key"] == "abc"
    assert sent.headers["User-Agent"] == http.USER_AGENT
    assert json.loads(sent.body or b"") == {"n": 1}


def test_redirects_are_not_followed(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/moved", status=302, headers={"Location": "http://169.254.169.254/"})
    mocked.get("http://169.254.169.254/", body="metadata")
    response = http.send(make_integration(), "GET", "/moved")
    assert response.status_code == 302
    assert len(mocked.calls) == 1


def test_no_cookie_is_carried_from_one_job_to_the_next(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/login", headers={"Set-Cookie": "session=alice-secret; Path=/"})
    mocked.get(f"{BASE}/items")
    shop = make_integration()
    http.send(shop, "GET", "/login")
    http.send(shop, "GET", "/items")
    assert "Cookie" not in mocked.calls[1].request.headers
    assert not http.session_for(shop.base_url).cookies


def test_params_become_the_query_and_no_params_none(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/items")
    http.send(make_integration(), "GET", "/items", params={"page": 2, "tag": ["a", "b"]})
    http.send(make_integration(), "GET", "/items", params={})
    assert mocked.calls[0].request.url == f"{BASE}/items?page=2&tag=a&tag=b"
    assert mocked.calls[1].request.url == f"{BASE}/items"


@pytest.mark.parametrize(
    ("timeout_ms", "timeout_s", "deadline_ms", "expected"),
    [(2500, None, None, (2.5, 2.5, 2.5)), (60_000, None, None, (10.0, 60.0, 60.0)),
     (2500, 0.5, None, (0.5, 0.5, 0.5)), (2500, None, 1000, (1.0, 1.0, 1.0)),
     (2500, None, 9000, (2.5, 2.5, 9.0))],
)
def test_timeout_is_connect_read_and_overall_deadline(
    mocked: responses.RequestsMock, timeout_ms: int, timeout_s: float | None,
    deadline_ms: int | None, expected: tuple[float, float, float],
) -> None:
    mocked.get(f"{BASE}/t")
    shop = replace(make_integration(timeout_ms=timeout_ms), deadline_ms=deadline_ms)
    http.send(shop, "GET", "/t", timeout_s=timeout_s)
    sent = getattr(mocked.calls[0].request, "req_kwargs")["timeout"]  # noqa: B009
    assert (sent.connect_timeout, sent.read_timeout, sent.total) == expected


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("nan")])
def test_bad_timeout_is_refused(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        http.send(make_integration(), "GET", "/t", timeout_s=timeout_s)


@pytest.mark.parametrize("path", ["http://evil.test/", "//evil.test", "/a/../../admin", "/x?y=1"])
def test_unsafe_path_is_never_sent(mocked: responses.RequestsMock, path: str) -> None:
    with pytest.raises(UnsafePathError):
        http.send(make_integration(), "GET", path)
    assert len(mocked.calls) == 0


def test_unsafe_header_is_never_sent(mocked: responses.RequestsMock) -> None:
    with pytest.raises(UnsafeHeaderError):
        http.send(make_integration(), "GET", "/a", headers={"X-A": "1\r\nHost: evil"})
    assert len(mocked.calls) == 0


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "GET /x", "", 5])
def test_unknown_method_is_refused(method: Any) -> None:
    with pytest.raises(ValueError, match="HTTP method"):
        http.send(make_integration(), method, "/a")


def test_requests_exceptions_pass_through(mocked: responses.RequestsMock) -> None:
    error = requests.ConnectTimeout("connect timed out")
    mocked.get(f"{BASE}/slow", body=error)
    with pytest.raises(requests.ConnectTimeout) as info:
        http.send(make_integration(), "GET", "/slow")
    assert info.value is error


def test_no_urllib3_retries_on_a_real_reset() -> None:
    with FaultServer(mode="reset") as upstream:
        shop = make_integration(upstream.url + "/api", timeout_ms=2000)
        with pytest.raises(requests.ConnectionError):
            http.send(shop, "GET", "/boom")
        assert [r["path"] for r in upstream.requests()] == ["/api/boom"]


def test_pooled_connection_is_reused_on_a_real_socket() -> None:
    with FaultServer() as upstream:
        shop = make_integration(upstream.url, timeout_ms=2000)
        for n in range(3):
            assert http.send(shop, "GET", f"/n{n}").json()["ok"] is True
        assert len({r["peer"] for r in upstream.requests()}) == 1


def test_another_origin_gets_its_own_session(mocked: responses.RequestsMock) -> None:
    mocked.get("https://backup.example.test/v2/a")
    shop = make_integration()
    http.send(replace(shop, base_url="https://backup.example.test/v2"), "GET", "/a")
    assert mocked.calls[0].request.url == "https://backup.example.test/v2/a"
    assert http.session_for(shop.base_url) is not http.session_for("https://x.test")


PROXY_AND_CA = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def test_the_environment_is_read_once_per_origin(monkeypatch: pytest.MonkeyPatch,
                                                  mocked: responses.RequestsMock) -> None:
    for name in PROXY_AND_CA:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "backup.example.test")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    shop = make_integration()
    assert http.session_for(shop.base_url).trust_env is False
    settings = http.environment_for(f"{shop.base_url}/orders?id=1")
    assert settings["proxies"].get("https") == "http://proxy.internal:3128"
    assert settings["verify"] == "/etc/ssl/certs/ca-certificates.crt"
    assert "https" not in http.environment_for("https://backup.example.test/v2/a")["proxies"]

    looked_up: list[str] = []
    real = requests.utils.get_environ_proxies
    monkeypatch.setattr(requests.sessions, "get_environ_proxies",
                        lambda url, no_proxy=None: looked_up.append(url) or real(url, no_proxy))
    mocked.get(f"{shop.base_url}/n")
    for _ in range(3):
        http.send(shop, "GET", "/n")
    assert looked_up == []  # answered from the cache, not the environment, on every call
    http.close_sessions()
    monkeypatch.delenv("HTTPS_PROXY")
    assert http.environment_for(shop.base_url)["proxies"].get("https") is None


# --- response limits: the overall deadline and the size cap ----------------------------------


def test_a_slow_drip_ends_at_the_overall_deadline() -> None:
    """One byte every 200 ms never trips a per-read timeout; the deadline still ends it."""
    with FaultServer(mode="drip", interval_ms=200, drip_bytes=100) as upstream:
        shop = make_integration(upstream.url, timeout_ms=800)
        started = time.monotonic()
        with pytest.raises(ResponseDeadlineError,
                           match=r"integration 'shop' did not finish within its 0\.8 s deadline"):
            http.send(shop, "GET", "/drip")
        assert 0.7 < time.monotonic() - started < 1.3
        upstream.set_mode("ok")  # the aborted connection is not reused half-read
        assert http.send(shop, "GET", "/next").json()["ok"] is True
        peers = [r["peer"] for r in upstream.requests()]
        assert peers[0] != peers[1]


def test_deadline_ms_overrides_the_call_timeout() -> None:
    with FaultServer(mode="drip", interval_ms=100, drip_bytes=100) as upstream:
        shop = replace(make_integration(upstream.url, timeout_ms=5000), deadline_ms=400)
        started = time.monotonic()
        with pytest.raises(ResponseDeadlineError, match=r"within its 0\.4 s deadline"):
            http.send(shop, "GET", "/drip")
        assert time.monotonic() - started < 1.0


def test_a_drip_that_finishes_in_time_is_read_whole() -> None:
    with FaultServer(mode="drip", interval_ms=5, drip_bytes=40) as upstream:
        response = http.send(make_integration(upstream.url, timeout_ms=3000), "GET", "/d")
        assert response.status_code == 200 and response.json() == {}


@pytest.mark.parametrize("declare_length", [False, True])
def test_an_answer_over_the_size_limit_is_refused_while_read(declare_length: bool) -> None:
    with FaultServer(mode="huge", size_bytes=20 * 1024 * 1024,
                     declare_length=declare_length) as upstream:
        shop = make_integration(upstream.url, timeout_ms=10_000)
        started = time.monotonic()
        with pytest.raises(ResponseTooLargeError) as caught:
            http.send(shop, "GET", "/export")
        assert time.monotonic() - started < 5
        expected = ("declared 20971520 bytes, more than" if declare_length else "went past")
        assert str(caught.value) == (
            f"The answer of integration 'shop' {expected} its max_response_bytes "
            "(10485760 bytes); reading stopped. Raise max_response_bytes if such answers are "
            "expected.")


def test_the_size_limit_is_per_integration_and_inclusive() -> None:
    with FaultServer(mode="huge", size_bytes=4096) as upstream:
        exact = replace(make_integration(upstream.url), max_response_bytes=4096)
        assert len(http.send(exact, "GET", "/x").content) == 4096
        with pytest.raises(ResponseTooLargeError, match=r"max_response_bytes \(4095 bytes\)"):
            http.send(replace(exact, max_response_bytes=4095), "GET", "/x")


def test_a_compressed_answer_is_limited_by_its_decoded_size(
        mocked: responses.RequestsMock) -> None:
    body = gzip.compress(b"[" + b"0," * 50_000 + b"0]")
    assert len(body) < 1000
    mocked.get(f"{BASE}/zip", body=body, headers={"Content-Encoding": "gzip"})
    with pytest.raises(ResponseTooLargeError):
        http.send(replace(make_integration(), max_response_bytes=10_000), "GET", "/zip")


def test_job_headers_override_the_integrations_in_any_case(
        mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/h")
    shop = make_integration(headers={"Accept": "application/json", "X-Api-Key": "k"})
    http.send(shop, "GET", "/h", headers={"accept": "text/csv"})
    sent = mocked.calls[0].request.headers
    assert sent["Accept"] == "text/csv" and sent["X-Api-Key"] == "k"
    assert len([name for name in sent if name.lower() == "accept"]) == 1
