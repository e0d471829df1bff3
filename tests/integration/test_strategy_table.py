"""Each default recovery strategy against the design's table, through real workers and the
local upstream (issue 14 item 2). Waits are scaled down where the table's are long (the
rate-limit block keeps its 5 attempts and factor 3 but starts at 100 ms); the unit tests in
tests/unit/test_strategies.py hold the default numbers themselves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.demo.simulate import OddStatusServer
from recovery.engine.runtime import get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.test_job_flow import integration

FINAL = {"succeeded", "degraded", "failed", "dead"}
RETRY = {"max_attempts": 3, "initial_delay_ms": 100, "backoff_factor": 2, "max_delay_ms": 5000,
         "jitter": 0}


@pytest.fixture
def secondary() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


def calls(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in job["attempts"] if row["kind"] == "call"]


def finished(job_id: str, calls_expected: int, timeout: float = 60.0) -> dict[str, Any]:
    """The final job once all its call attempts are in the audit trail (it drains async)."""
    deadline = time.monotonic() + timeout
    while True:
        job = wait_for_status(get_runtime().engine, job_id, FINAL, timeout)
        if len(calls(job)) >= calls_expected or time.monotonic() > deadline:
            assert len(calls(job)) == calls_expected, job
            return job
        time.sleep(0.2)


def rows(sql: str, at_least: int = 1, timeout: float = 30.0, **params: Any) -> list[Any]:
    """The rows of `sql` once there are `at_least` (the audit spool drains about once a
    second), or what there is at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with get_runtime().engine.connect() as conn:
            found = list(conn.execute(text(sql), params))
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_network_retry_makes_three_attempts_with_factor_two(
        configure, upstream: FaultServer, start_worker) -> None:
    env = configure([integration(upstream.url, retry=RETRY)])
    upstream.down()
    start_worker(env)
    job = finished(recovery.enqueue("shop", "GET", "/orders/1"), 3)
    assert job["status"] == "dead"
    attempts = calls(job)
    assert [a["strategy"] for a in attempts[:2]] == ["network-retry"] * 2
    assert [a["decision"] for a in attempts] == ["retry", "retry", "dead_letter"]
    assert [a["delay_ms"] for a in attempts[:2]] == [100, 200]


def test_rate_limit_backoff_makes_five_attempts_by_factor_three_then_serves_the_cache(
        configure, upstream: FaultServer, secondary: FaultServer, start_worker) -> None:
    fallbacks = [{"type": "api", "base_url": secondary.url, "priority": 1},
                 {"type": "cache", "priority": 2}]
    env = configure([integration(upstream.url, retry=RETRY, fallbacks=fallbacks,
                                 strategies={"rate_limit": {"initial_delay_ms": 100}})])
    start_worker(env)
    first = recovery.enqueue("shop", "GET", "/catalog")
    assert first.get(timeout=60).status == "succeeded"  # now cached
    upstream.set_mode("429", retry_after_s=0)
    handle = recovery.enqueue("shop", "GET", "/catalog")
    outcome = handle.get(timeout=60)
    assert (outcome.status, outcome.fallback) == ("degraded", "cache")
    assert outcome.body == first.get().body
    job = finished(handle, 5)
    attempts = calls(job)
    assert [a["http_status"] for a in attempts] == [429] * 5
    assert [a["delay_ms"] for a in attempts[:4]] == [100, 300, 900, 2700]
    assert {a["strategy"] for a in attempts} == {"rate-limit-backoff"}
    assert attempts[-1]["decision"] == "fallback" and job["fallback_used"] == "cache"
    assert secondary.requests() == []  # the cache comes first, although api has priority 1


def test_server_error_circuit_opens_the_breaker_then_asks_the_secondary_api(
        configure, upstream: FaultServer, secondary: FaultServer, start_worker) -> None:
    fallbacks = [{"type": "cache", "priority": 1},
                 {"type": "api", "base_url": secondary.url, "priority": 2}]
    env = configure([integration(upstream.url, retry=RETRY, fallbacks=fallbacks,
                                 circuit_breaker={"threshold": 3, "reset_timeout_ms": 60000})])
    start_worker(env, concurrency=1)
    assert recovery.enqueue("shop", "GET", "/stock").get(timeout=60).status == "succeeded"
    upstream.set_mode("5xx", status=503)
    handle = recovery.enqueue("shop", "GET", "/stock")
    outcome = handle.get(timeout=60)
    assert (outcome.status, outcome.fallback, outcome.http_status) == ("degraded", "api", 200)
    assert outcome.body["path"] == "/stock"
    attempts = calls(finished(handle, 3))
    assert {a["strategy"] for a in attempts} == {"server-error-circuit"}
    opened = rows("SELECT to_state FROM breaker_transitions WHERE integration = 'shop'")
    assert [row[0] for row in opened] == ["open"]
    assert [r["path"] for r in secondary.requests()] == ["/stock"]  # api before the cache


def test_auth_token_refresh_refreshes_once_then_alerts(
        configure, upstream: FaultServer, start_worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_SECRET", "s3cr3t-value")
    oauth = {"token_url": f"{upstream.url}/oauth/token", "client_id": "shop",
             "client_secret_env": "SHOP_SECRET"}
    env = configure([integration(upstream.url, retry=RETRY, oauth=oauth)])
    upstream.set_mode("auth")
    upstream.set_script([401, 401])
    start_worker(env, concurrency=1)
    handle = recovery.enqueue("shop", "GET", "/me")
    outcome = handle.get(timeout=60)
    assert (outcome.status, outcome.http_status) == ("dead", 401)
    attempts = calls(finished(handle, 2))
    assert [(a["decision"], a["strategy"]) for a in attempts] == [
        ("retry", "auth-token-refresh"), ("dead_letter", "dead-letter-queue")]
    assert upstream.tokens_issued() == 2  # the first token, then one refresh
    kinds = rows("SELECT kind FROM alerts WHERE details->>'job_id' = :job", 2,
                 job=str(handle))
    assert sorted(row[0] for row in kinds) == ["strategy_gave_up", "token_refresh_failed"]


def test_unknown_goes_to_the_dead_letter_queue_at_once_despite_a_fallback(
        configure, start_worker) -> None:
    odd = OddStatusServer()
    try:
        env = configure([integration(odd.url, retry=RETRY,
                                     fallbacks=[{"type": "default", "value": {"x": 1}}])])
        start_worker(env)
        handle = recovery.enqueue("shop", "GET", "/odd")
        outcome = handle.get(timeout=60)
        assert (outcome.status, outcome.fallback, outcome.strategy) == (
            "dead", None, "dead-letter-queue")
        assert outcome.error_category == "unknown"
        [attempt] = calls(finished(handle, 1))
        assert (attempt["decision"], attempt["strategy"]) == ("dead_letter", "dead-letter-queue")
        assert len(odd.requests()) == 1
    finally:
        odd.stop()


def test_a_configured_status_block_retries_what_the_table_would_not(
        configure, upstream: FaultServer, start_worker) -> None:
    env = configure([integration(upstream.url, retry=RETRY, strategies={
        409: {"name": "conflict-retry", "retry": True, "attempts": 2,
              "initial_delay_ms": 50}})])
    upstream.set_script([409])
    start_worker(env)
    handle = recovery.enqueue("shop", "PUT", "/orders/7", json={"n": 7})
    assert handle.get(timeout=60).status == "succeeded"
    attempts = calls(finished(handle, 2))
    assert [(a["http_status"], a["decision"], a["strategy"]) for a in attempts] == [
        (409, "retry", "conflict-retry"), (200, "done", None)]
    assert attempts[0]["delay_ms"] == 50


def test_the_strategies_command_shows_what_each_failure_gets(
        configure, upstream: FaultServer, secondary: FaultServer) -> None:
    from click.testing import CliRunner

    from recovery.cli.main import main

    configure([integration(upstream.url, retry=RETRY, fallbacks=[
        {"type": "api", "base_url": secondary.url, "priority": 1},
        {"type": "cache", "priority": 2}], strategies={
        "rate_limit": {"initial_delay_ms": 100},
        409: {"name": "conflict-retry", "retry": True, "attempts": 2}})])
    shown = CliRunner().invoke(main, ["strategies", "shop", "--json"])
    assert shown.exit_code == 0, shown.output
    rows = {row["key"]: row for row in json.loads(shown.output)}
    assert (rows["rate_limit"]["strategy"], rows["rate_limit"]["attempts"],
            rows["rate_limit"]["initial_delay_ms"], rows["rate_limit"]["factor"],
            rows["rate_limit"]["fallbacks"]) == ("rate-limit-backoff", 5, 100, 3.0,
                                                 ["cache:2", "api:1"])
    assert rows["server_error"]["fallbacks"] == ["api:1", "cache:2"]
    assert rows["unknown"]["dead_letter"] is True and rows["unknown"]["fallbacks"] == []
    assert rows["client_error"]["fallbacks"] == []
    assert (rows["409"]["strategy"], rows["409"]["retry"], rows["409"]["attempts"]) == (
        "conflict-retry", True, 2)
    text = CliRunner().invoke(main, ["strategies", "shop"])
    assert "rate_limit          rate-limit-backoff     attempts=5" in text.output
    unknown = CliRunner().invoke(main, ["strategies", "nope"])
    assert unknown.exit_code == 2
    assert unknown.output.strip() == "Error: Unknown integration 'nope'. Known integrations: shop."
