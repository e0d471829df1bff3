"""Worker loss: late acks redeliver, idempotency keeps calls single, poison jobs are parked."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis

import recovery
from recovery.audit.queries import get_job, list_jobs
from recovery.audit.sql import decode_ops
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from tests.integration.test_job_flow import integration

FINAL = {"succeeded", "degraded", "failed", "dead", "duplicate"}
SHORT_TIMES = {"REDIS_VISIBILITY_TIMEOUT": "20", "RETRY_MAX_DELAY": "2000",
               "CIRCUIT_BREAKER_RESET_TIMEOUT": "2000", "RATE_LIMIT_WINDOW": "1000",
               "RATE_LIMIT_MAX_REQUESTS": "100000", "MAX_DEFER_WINDOW": "8000"}


def fast_integration(url: str) -> dict[str, Any]:
    retry = {"max_attempts": 3, "initial_delay_ms": 200, "backoff_factor": 2,
             "max_delay_ms": 2000, "jitter": 0}
    return integration(url, retry=retry, timeout_ms=5000,
                       circuit_breaker={"threshold": 1000, "reset_timeout_ms": 2000},
                       rate_limit={"window_ms": 1000, "max_requests": 100000})


def wait_all(engine: Any, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id not in done:
                job = get_job(engine, job_id)
                if job is not None and job["status"] in FINAL:
                    done[job_id] = job
        time.sleep(0.5)
    return done


def recorded_successes(engine: Any, client: redis.Redis) -> set[str]:
    """Jobs whose success is recorded: in PostgreSQL or still in the Redis audit spool, which
    a worker drains about once a second (a SIGKILLed worker leaves its rows there). The spool
    is read first, so a row a drain moves meanwhile is seen on one side or the other."""
    spool = get_runtime().settings.redis_key_prefix + "audit:spool"
    spooled = {op.job_id for _, fields in client.xrange(spool, "-", "+")
               for op in decode_ops(fields[b"ops"])
               if op.kind == "job_status" and op.values.get("status") == "succeeded"}
    stored = {job["id"] for job in list_jobs(engine, status="succeeded", limit=1000)}
    return spooled | stored


def test_sigkill_worker_with_jobs_in_flight_loses_nothing(
        broker: str, configure, upstream: FaultServer, start_worker,
        redis_client: redis.Redis) -> None:
    env = configure([fast_integration(upstream.url)], **SHORT_TIMES)
    upstream.set_mode("slow", delay_ms=100)
    first = start_worker(env, concurrency=4)
    engine = get_runtime().engine
    job_ids = [recovery.enqueue("shop", "POST", f"/load/{n}", json={"n": n}) for n in range(200)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(upstream.successes_by_key()) < 30 or len(
            recorded_successes(engine, redis_client)) < 20):
        time.sleep(0.05)
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    recorded_ids = recorded_successes(engine, redis_client)  # nothing drains until the restart
    start_worker(env, concurrency=4)
    done = wait_all(engine, job_ids, timeout=150)
    recorded = {done[job_id]["idempotency_key"] for job_id in recorded_ids if job_id in done}
    missing = set(job_ids) - set(done)
    assert not missing, f"{len(missing)} jobs never finished, e.g. {sorted(missing)[:3]}"
    assert {job["status"] for job in done.values()} <= {"succeeded", "dead", "duplicate"}
    successes = upstream.successes_by_key()
    keys = {job["idempotency_key"] for job in done.values()}
    assert keys <= set(successes), "a job ended without the upstream ever answering it"
    repeated = {key for key, count in successes.items() if count > 1}
    assert len(recorded) >= 20, "the kill came before jobs finished; the test proves nothing"
    assert not repeated & recorded, "a key whose success was recorded was called again"
    # A call whose answer arrived while its process was being killed was never recorded;
    # redelivery repeats it (with the same Idempotency-Key). At most one per pool process.
    assert len(repeated) <= 4


def test_poison_job_is_dead_lettered_after_the_configured_deliveries(
        broker: str, configure, upstream: FaultServer, start_worker) -> None:
    env = configure([fast_integration(upstream.url)], POISON_MAX_DELIVERIES="2", **SHORT_TIMES)
    upstream.set_mode("slow", delay_ms=60000)
    worker = start_worker(env, concurrency=1, pool="prefork")  # a pool process to kill
    engine = get_runtime().engine
    job_id = recovery.enqueue("shop", "GET", "/poison")
    for delivery in (1, 2):
        deadline = time.monotonic() + 30
        while len(upstream.requests()) < delivery and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(upstream.requests()) == delivery
        for pid in worker.pool_pids():
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    job = get_job(engine, job_id)
    while (job is None or job["status"] != "dead") and time.monotonic() < deadline:
        time.sleep(0.3)
        job = get_job(engine, job_id)
    assert job is not None and job["status"] == "dead", job
    assert job["last_error"].startswith("poison")
    assert len(upstream.requests()) == 2, "the poison job was called again after its limit"
