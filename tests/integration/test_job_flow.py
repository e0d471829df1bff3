"""Issue 2 end to end: a real worker, a real upstream, PostgreSQL audit rows."""

from __future__ import annotations

from typing import Any

import pytest
import redis

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.engine.producer import EnqueueError
from recovery.engine.runtime import get_runtime
from tests.integration.conftest import wait_for_status


def integration(url: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "shop",
        "base_url": url,
        "timeout_ms": 2000,
        "retry": {
            "max_attempts": 3,
            "initial_delay_ms": 300,
            "backoff_factor": 2,
            "max_delay_ms": 5000,
            "jitter": 0,
        },
        "circuit_breaker": {"threshold": 50, "reset_timeout_ms": 1000},
        "fallbacks": [],
        "rate_limit": {"window_ms": 1000, "max_requests": 1000},
    }
    entry.update(overrides)
    return entry


def queue_depth(client: redis.Redis) -> int:
    prefix = get_runtime().settings.redis_key_prefix
    return int(client.llen(f"{prefix}integrations"))


def call_attempts(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in job["attempts"] if row["kind"] == "call"]


def test_503_503_200_succeeds_after_three_attempts_with_growing_delays(
    broker: str, configure, upstream: FaultServer, start_worker
) -> None:
    env = configure([integration(upstream.url)])
    upstream.set_script([503, 503, 200])
    start_worker(env)
    job_id = recovery.enqueue("shop", "POST", "/orders", json={"id": 1})
    job = wait_for_status(get_runtime().engine, job_id, {"succeeded", "failed", "dead"})
    assert job["status"] == "succeeded"
    attempts = call_attempts(job)
    assert [a["http_status"] for a in attempts] == [503, 503, 200]
    assert [a["decision"] for a in attempts] == ["retry", "retry", "done"]
    delays = [a["delay_ms"] for a in attempts[:2]]
    assert delays[0] >= 300 and delays[1] > delays[0]
    assert all(a["delay_source"] == "backoff" for a in attempts[:2])
    assert job["attempt_count"] == 3
    assert job["strategy"] == "server-error-circuit"


def test_400_fails_after_one_attempt(configure, upstream: FaultServer, start_worker) -> None:
    env = configure([integration(upstream.url)], DLQ_ENABLED="false")
    upstream.set_script([400])
    start_worker(env)
    job_id = recovery.enqueue("shop", "GET", "/orders/1")
    job = wait_for_status(get_runtime().engine, job_id, {"succeeded", "failed", "dead"})
    assert job["status"] == "failed"
    attempts = call_attempts(job)
    assert len(attempts) == 1
    assert attempts[0]["http_status"] == 400
    assert attempts[0]["retryable"] is False
    assert "client_error" in attempts[0]["error_categories"]
    assert len(upstream.requests()) == 1


def test_429_retry_after_waits_at_least_the_given_time(
    broker: str, configure, upstream: FaultServer, start_worker
) -> None:
    env = configure([integration(upstream.url)])
    upstream.set_mode("429", retry_after_s=2)
    upstream.set_script([429, 200])
    start_worker(env)
    job_id = recovery.enqueue("shop", "GET", "/quota")
    job = wait_for_status(get_runtime().engine, job_id, {"succeeded", "failed", "dead"})
    assert job["status"] == "succeeded"
    seen = [r for r in upstream.requests() if r["path"] == "/quota"]
    assert len(seen) == 2
    assert seen[1]["time"] - seen[0]["time"] >= 2.0
    first = call_attempts(job)[0]
    assert first["delay_source"] == "retry-after" and first["delay_ms"] >= 2000


def test_connection_refused_is_network_and_retried(
    configure, upstream: FaultServer, start_worker
) -> None:
    env = configure([integration(upstream.url)], DLQ_ENABLED="false")
    upstream.down()
    start_worker(env)
    job_id = recovery.enqueue("shop", "GET", "/down")
    job = wait_for_status(get_runtime().engine, job_id, {"succeeded", "failed", "dead"})
    attempts = call_attempts(job)
    assert job["status"] == "failed"
    assert len(attempts) == 3
    assert all("network" in a["error_categories"] and a["retryable"] for a in attempts)
    assert [a["decision"] for a in attempts] == ["retry", "retry", "fail"]


BAD_INPUTS = [
    (("nope", "GET", "/x"), {}, "Unknown integration 'nope'"),
    (("shop", "FETCH", "/x"), {}, "'FETCH' is not an HTTP method"),
    (("shop", "GET", "http://evil.example/x"), {}, ""),
    (("shop", "GET", "//evil.example/x"), {}, ""),
    (("shop", "GET", "/a/../../admin"), {}, ""),
    (("shop", "GET", "/a/%2e%2e/admin"), {}, ""),
    (("shop", "POST", "/x"), {"json": {"when": object()}}, "not JSON-serialisable"),
    (("shop", "POST", "/x"), {"json": "x" * (1024 * 1024 + 1)}, "over the limit"),
    (("shop", "GET", "/x"), {"headers": {"X-A": "a\r\nInjected: 1"}}, ""),
]


@pytest.mark.parametrize(("args", "options", "message"), BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_is_enqueued_or_written(
    configure,
    upstream: FaultServer,
    redis_client: redis.Redis,
    args: tuple[str, str, str],
    options: dict[str, Any],
    message: str,
) -> None:
    from recovery.audit.queries import list_jobs

    configure([integration(upstream.url)])
    before = queue_depth(redis_client)
    with pytest.raises(EnqueueError) as refused:
        recovery.enqueue(*args, **options)
    assert message in str(refused.value)
    assert str(refused.value).endswith(".")
    assert queue_depth(redis_client) == before
    assert list_jobs(get_runtime().engine) == []


def test_same_idempotency_key_enqueued_twice_calls_the_upstream_once(
        configure, upstream: FaultServer, start_worker) -> None:
    env = configure([integration(upstream.url)])
    start_worker(env, concurrency=1)
    engine = get_runtime().engine
    first = recovery.enqueue("shop", "POST", "/charges", json={"n": 1}, idempotency_key="order-9")
    assert wait_for_status(engine, first, {"succeeded"})["status"] == "succeeded"
    second = recovery.enqueue("shop", "POST", "/charges", json={"n": 1}, idempotency_key="order-9")
    duplicate = wait_for_status(engine, second, {"succeeded", "duplicate"})
    assert duplicate["status"] == "duplicate"
    assert [a["kind"] for a in duplicate["attempts"]] == ["duplicate"]
    assert upstream.successes_by_key() == {"order-9": 1}
    assert [r["headers"].get("Idempotency-Key") for r in upstream.requests()] == ["order-9"]
