"""Response limits with real worker processes: a slow-drip upstream frees the worker at the
call's deadline (a retryable `transient` failure); a 20 MiB answer is refused as
`response_too_large` (not retried, not counted against the breaker, no fallback)."""

from __future__ import annotations

import time

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.test_job_flow import call_attempts, integration


def test_a_slow_drip_is_cut_at_the_deadline_and_retried(
        configure, upstream: FaultServer, start_worker) -> None:
    env = configure([integration(upstream.url, timeout_ms=1000,
                                 retry={"max_attempts": 2, "initial_delay_ms": 100,
                                        "jitter": 0})])
    start_worker(env, concurrency=1)
    upstream.set_mode("drip", interval_ms=200, drip_bytes=300)  # 60 s of body
    started = time.monotonic()
    job_id = recovery.enqueue("shop", "GET", "/report")
    job = wait_for_status(get_runtime().engine, job_id, {"dead"}, timeout=30)
    assert time.monotonic() - started < 15  # two 1 s attempts, not two 60 s drips
    calls = call_attempts(job)
    assert [c["decision"] for c in calls] == ["retry", "dead_letter"]
    for call in calls:
        assert call["error_categories"] == ["transient"]
        assert call["retryable"] is True
        assert 900 <= call["duration_ms"] < 2000, call
        assert "1 s deadline" in call["error_message"]
    assert len([r for r in upstream.requests() if r["path"] == "/report"]) == 2

    upstream.set_mode("ok")  # the single pool process is free again at once
    quick = recovery.enqueue("shop", "GET", "/after")
    assert wait_for_status(get_runtime().engine, quick, {"succeeded"}, timeout=15)


def test_a_huge_answer_is_refused_once_without_tripping_the_breaker(
        configure, upstream: FaultServer, start_worker) -> None:
    env = configure([integration(
        upstream.url, max_response_bytes=1024 * 1024,
        circuit_breaker={"threshold": 1, "reset_timeout_ms": 60_000},
        fallbacks=[{"type": "default", "value": {"stand": "in"}}])])
    start_worker(env, concurrency=1)
    upstream.set_mode("huge", size_bytes=20 * 1024 * 1024)
    job_id = recovery.enqueue("shop", "GET", "/export")
    job = wait_for_status(get_runtime().engine, job_id, {"dead"}, timeout=30)
    calls = call_attempts(job)
    assert len(calls) == 1  # not retryable
    call = calls[0]
    assert call["error_categories"] == ["response_too_large"]
    assert call["retryable"] is False and call["http_status"] is None
    assert "max_response_bytes (1048576 bytes)" in call["error_message"]
    assert job["strategy"] == "dead-letter-queue"  # the default fallback did not hide it
    assert job["fallback_used"] is None
    shop = get_runtime().registry.get("shop")
    assert get_runtime().breaker(shop).snapshot().state == "closed"  # threshold 1, still closed

    upstream.set_mode("huge", size_bytes=20 * 1024 * 1024, declare_length=True)
    declared = recovery.enqueue("shop", "GET", "/export")
    job = wait_for_status(get_runtime().engine, declared, {"dead"}, timeout=30)
    assert "declared 20971520 bytes" in call_attempts(job)[0]["error_message"]
