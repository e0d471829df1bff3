"""Issue 3 with real worker processes: the shared breaker, fallbacks, token refresh, limits."""

from __future__ import annotations

import time
from typing import Any

import pytest

import recovery
from recovery.audit.queries import get_job, list_transitions
from recovery.core.message import JobSpec, parse_time
from recovery.demo.faultserver import FaultServer
from recovery.engine.producer import build_job
from recovery.engine.runtime import get_runtime
from recovery.engine.synchronous import run_synchronously
from tests.integration.conftest import wait_for_status
from tests.integration.test_job_flow import integration

FINAL = {"succeeded", "degraded", "failed", "dead", "duplicate"}


def one_shot(url: str, **overrides: Any) -> dict[str, Any]:
    """An integration whose jobs make a single attempt, so each job is one upstream call."""
    retry = {"max_attempts": 1, "initial_delay_ms": 100, "backoff_factor": 2,
             "max_delay_ms": 1000, "jitter": 0}
    return integration(url, retry=retry, **overrides)


def calls_to(upstream: FaultServer, prefix: str) -> list[dict[str, Any]]:
    return [r for r in upstream.requests() if r["path"].startswith(prefix)]


def test_breaker_trips_defers_without_calls_probes_once_and_closes(
        broker: str, configure, upstream: FaultServer, start_worker) -> None:
    breaker = {"threshold": 3, "reset_timeout_ms": 3000}
    env = configure([one_shot(upstream.url, circuit_breaker=breaker)], DLQ_ENABLED="false")
    upstream.set_mode("5xx", status=503)
    start_worker(env, concurrency=1)
    engine = get_runtime().engine
    failing = [recovery.enqueue("shop", "GET", f"/fail/{n}") for n in range(3)]
    deadline = time.monotonic() + 30  # the third answer trips the breaker; the audit lags it
    while len(calls_to(upstream, "/fail")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(calls_to(upstream, "/fail")) == 3
    upstream.set_mode("ok")  # answers well from now on: only the breaker holds the calls back
    later = [recovery.enqueue("shop", "GET", f"/later/{n}") for n in range(3)]
    assert {wait_for_status(engine, job_id, FINAL)["status"] for job_id in failing} == {"failed"}
    finished = [wait_for_status(engine, job_id, FINAL, timeout=40) for job_id in later]
    assert {j["status"] for j in finished} == {"succeeded"}
    assert all(j["attempt_count"] == 1 for j in finished), "a deferral spent an attempt"
    transitions = list(reversed(list_transitions(engine, "shop")))
    moves = [(t["from_state"], t["to_state"]) for t in transitions]
    assert moves[:3] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    # Judged from recorded times, not by racing the open time: every job was deferred while
    # the breaker was open, and no call reached the upstream before it half-opened.
    half_open_at = parse_time(transitions[1]["at"]).timestamp()
    for job in finished:
        deferred = [a for a in job["attempts"] if a["kind"] == "deferral"]
        assert deferred and parse_time(deferred[0]["started_at"]).timestamp() < half_open_at, job
    early = [r for r in calls_to(upstream, "/later") if r["time"] < half_open_at]
    assert early == [], "jobs called a dependency whose breaker was open"


def test_fallbacks_in_priority_order_and_cache_serves_last_good_body(
        configure, upstream: FaultServer) -> None:
    secondary = FaultServer(mode="5xx").start()
    try:
        fallbacks = [{"type": "api", "priority": 1, "base_url": secondary.url},
                     {"type": "cache", "priority": 2},
                     {"type": "degraded", "priority": 3, "message": "Shop is resting."}]
        configure([one_shot(upstream.url, fallbacks=fallbacks)])
        runtime = get_runtime()
        job = build_job(runtime.registry, "shop", "GET", "/items/7")
        good = run_synchronously(job, runtime)[-1]
        assert good.status == "succeeded"
        upstream.set_mode("5xx", status=502)
        cached = run_synchronously(build_job(runtime.registry, "shop", "GET", "/items/7"),
                                   runtime)[-1]
        assert (cached.status, cached.fallback) == ("degraded", "cache")
        assert cached.body == good.body
        assert len(secondary.requests()) == 1, "the api fallback was not tried first"
        fresh = run_synchronously(build_job(runtime.registry, "shop", "GET", "/items/8"),
                                  runtime)[-1]
        assert (fresh.status, fresh.fallback) == ("degraded", "degraded")
        assert fresh.body["message"] == "Shop is resting."
        secondary.set_mode("ok")
        job = build_job(runtime.registry, "shop", "GET", "/items/9")
        served = run_synchronously(job, runtime)[-1]
        assert (served.status, served.fallback) == ("degraded", "api")
        audit = get_job(runtime.engine, job.job_id)
        assert audit is not None
        assert (audit["status"], audit["fallback_used"]) == ("degraded", "api")
    finally:
        secondary.stop()


def test_token_refresh_on_401_once_then_success(
        configure, upstream: FaultServer, start_worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_SECRET", "s3cr3t-value")
    oauth = {"token_url": f"{upstream.url}/oauth/token", "client_id": "shop",
             "client_secret_env": "SHOP_SECRET"}
    env = configure([integration(upstream.url, oauth=oauth)])
    upstream.set_mode("auth")
    start_worker(env, concurrency=1)
    engine = get_runtime().engine
    first = wait_for_status(engine, recovery.enqueue("shop", "GET", "/me"), FINAL)
    assert first["status"] == "succeeded" and upstream.tokens_issued() == 1
    upstream.revoke_tokens()
    second = wait_for_status(engine, recovery.enqueue("shop", "GET", "/me"), FINAL)
    assert second["status"] == "succeeded"
    assert upstream.tokens_issued() == 2
    strategies = [a["strategy"] for a in second["attempts"] if a["kind"] == "call"]
    assert strategies[0] == "auth-token-refresh"
    assert second["attempt_count"] == 1, "the refresh retry spent an attempt"


def test_rate_limit_holds_across_two_worker_processes(
        broker: str, configure, upstream: FaultServer, start_worker) -> None:
    limit = {"window_ms": 1000, "max_requests": 4}
    env = configure([integration(upstream.url, rate_limit=limit)])
    start_worker(env, concurrency=2)
    start_worker(env, concurrency=2)
    engine = get_runtime().engine
    jobs = [recovery.enqueue("shop", "GET", f"/limited/{n}") for n in range(12)]
    for job_id in jobs:
        assert wait_for_status(engine, job_id, FINAL, timeout=60)["status"] == "succeeded"
    times = sorted(r["time"] for r in calls_to(upstream, "/limited"))
    assert len(times) == 12
    for i, start in enumerate(times):
        # The limiter grants by Redis time; arrival adds a few ms of jitter.
        in_window = [t for t in times[i:] if t - start < 0.95]
        assert len(in_window) <= 4, f"{len(in_window)} calls within one second"


def test_retry_after_pauses_every_worker(configure, upstream: FaultServer, start_worker) -> None:
    env = configure([integration(upstream.url)])
    upstream.set_mode("429", retry_after_s=3)
    upstream.set_script([429])
    start_worker(env, concurrency=2)
    start_worker(env, concurrency=2)
    engine = get_runtime().engine
    first = recovery.enqueue("shop", "GET", "/paused/first")
    deadline = time.monotonic() + 20
    while not calls_to(upstream, "/paused/first") and time.monotonic() < deadline:
        time.sleep(0.05)
    upstream.set_mode("ok")
    others = [recovery.enqueue("shop", "GET", f"/paused/{n}") for n in range(4)]
    for job_id in [first, *others]:
        assert wait_for_status(engine, job_id, FINAL, timeout=60)["status"] == "succeeded"
    paused_at = calls_to(upstream, "/paused/first")[0]["time"]
    later = [r["time"] for r in calls_to(upstream, "/paused") if r["time"] > paused_at]
    assert len(later) == 5
    assert min(later) - paused_at >= 2.9, "a worker called during the shared Retry-After pause"


def test_job_spec_round_trips_through_the_message() -> None:
    job = JobSpec(job_id="j", integration="shop", method="GET", path="/x",
                  headers={"Authorization": "Bearer abc"}, idempotency_key="k")
    assert JobSpec.from_message(job.to_message()) == job
    assert "abc" not in repr(job.redacted())
