"""Idempotency keys per integration (issue 12 item 6) and the bounds of their Redis keys
(issue 11 item 4): a key reused with a different request is refused at enqueue; the same key
on another integration is a different key; every record expires."""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

import recovery
from recovery.audit.models import Job
from recovery.core.message import JobSpec, Progress
from recovery.demo.faultserver import FaultServer
from recovery.engine.pipeline import run_job
from recovery.engine.producer import EnqueueError
from recovery.engine.runtime import get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.test_job_flow import integration, queue_depth
from tests.integration.test_outbound import wait_rows

pytestmark = pytest.mark.integration

FINAL = {"succeeded", "failed", "dead", "duplicate"}
TTL_MS = 3_600_000
VISIBILITY_S = 120


def two_integrations(url: str) -> list[dict[str, Any]]:
    return [integration(url, id="alpha"), integration(url, id="beta")]


def job_rows() -> int:
    with get_runtime().engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Job.__table__)) or 0)


def idem_key(integration_id: str, key: str, part: str) -> str:
    return get_runtime().idempotency.key_name(integration_id, key, part)


def test_a_key_reused_with_a_different_request_is_refused_and_nothing_is_enqueued(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    configure(two_integrations(upstream.url))
    recovery.enqueue("alpha", "POST", "/orders", json={"sku": "a", "qty": 1},
                     idempotency_key="order-7")
    depth, rows = queue_depth(redis_client), job_rows()
    changed = [
        ("POST", "/orders", {"sku": "a", "qty": 2}, None),  # body
        ("PUT", "/orders", {"sku": "a", "qty": 1}, None),  # method
        ("POST", "/orders/7", {"sku": "a", "qty": 1}, None),  # path
        ("POST", "/orders", {"sku": "a", "qty": 1}, {"dry_run": "1"}),  # query parameters
    ]
    for method, path, body, params in changed:
        with pytest.raises(EnqueueError) as refused:
            recovery.enqueue("alpha", method, path, json=body, params=params,
                             idempotency_key="order-7")
        assert str(refused.value) == (
            "Idempotency key 'order-7' was already used with a different request on "
            "integration 'alpha'; use a new key or resend the same request.")
    assert queue_depth(redis_client) == depth
    assert job_rows() == rows


def test_the_same_request_with_the_same_key_is_accepted(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    configure(two_integrations(upstream.url))
    body = {"sku": "a", "qty": 1, "meta": {"x": 1, "y": 2}}
    first = recovery.enqueue("alpha", "POST", "/orders", json=body, idempotency_key="order-8")
    reordered = {"meta": {"y": 2, "x": 1}, "qty": 1, "sku": "a"}  # same JSON, other key order
    second = recovery.enqueue("alpha", "post", "/orders", json=reordered,
                              headers={"X-Trace": "other"}, idempotency_key="order-8")
    assert first != second
    assert queue_depth(redis_client) == 2


def test_keys_are_scoped_per_integration_through_real_workers(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    env = configure(two_integrations(upstream.url), IDEMPOTENCY_TTL=str(TTL_MS),
                    REDIS_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    start_worker(env, concurrency=1)
    engine = get_runtime().engine
    on_alpha = recovery.enqueue("alpha", "POST", "/orders", json={"n": 1}, idempotency_key="k")
    assert wait_for_status(engine, on_alpha, FINAL)["status"] == "succeeded"
    # Another integration, another request: not a reuse, and not a duplicate either.
    on_beta = recovery.enqueue("beta", "POST", "/refunds", json={"n": 2}, idempotency_key="k")
    assert wait_for_status(engine, on_beta, FINAL)["status"] == "succeeded"
    again = recovery.enqueue("alpha", "POST", "/orders", json={"n": 1}, idempotency_key="k")
    assert wait_for_status(engine, again, FINAL)["status"] == "duplicate"

    sent = [(r["method"], r["path"], r["idempotency_key"]) for r in upstream.requests()]
    assert sent == [("POST", "/orders", "k"), ("POST", "/refunds", "k")]
    for integration_id in ("alpha", "beta"):
        assert redis_client.get(idem_key(integration_id, "k", "ok")) is not None
        for part in ("ok", "req"):
            ttl_ms = redis_client.pttl(idem_key(integration_id, "k", part))
            assert TTL_MS - 60_000 < ttl_ms <= TTL_MS


def test_a_generated_key_keeps_its_success_for_the_redelivery_window_only(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    env = configure(two_integrations(upstream.url), IDEMPOTENCY_TTL=str(TTL_MS),
                    REDIS_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    start_worker(env, concurrency=1)
    job_id = recovery.enqueue("alpha", "GET", "/orders")
    job = wait_for_status(get_runtime().engine, job_id, FINAL)
    assert (job["status"], job["idempotency_key"]) == ("succeeded", job_id)
    window_s = 2 * VISIBILITY_S
    assert 0 < redis_client.ttl(idem_key("alpha", job_id, "ok")) <= window_s
    assert not redis_client.exists(idem_key("alpha", job_id, "req"))  # unique: nothing to check
    counters = list(redis_client.scan_iter(
        match=f"{os.environ['RECOVERY_REDIS_PREFIX']}idem:deliveries:{job_id}:*"))
    assert counters and all(0 < redis_client.ttl(key) <= window_s for key in counters)


def test_every_idempotency_and_audit_key_has_a_bound(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    """After real jobs (given keys, generated keys, a duplicate), each key of these families
    either expires or is a stream with a cap."""
    env = configure(two_integrations(upstream.url), AUDIT_SPOOL_MAX_ENTRIES="5000")
    start_worker(env, concurrency=1)
    engine = get_runtime().engine
    ids = [recovery.enqueue("alpha", "POST", "/orders", json={"n": n}, idempotency_key=f"b{n}")
           for n in range(3)]
    ids += [recovery.enqueue("beta", "GET", "/orders"),
            recovery.enqueue("alpha", "POST", "/orders", json={"n": 0}, idempotency_key="b0")]
    for job_id in ids:
        wait_for_status(engine, job_id, FINAL)
    prefix = os.environ["RECOVERY_REDIS_PREFIX"]
    keys = [key.decode() for key in redis_client.scan_iter(match=f"{prefix}idem:*")]
    keys += [key.decode() for key in redis_client.scan_iter(match=f"{prefix}audit:*")]
    assert any(":ok" in key for key in keys) and any("deliveries" in key for key in keys)
    for key in keys:
        if redis_client.type(key) == b"stream":
            continue  # the spool and the rejected rows: capped streams (test_audit_spool_bounds)
        assert redis_client.ttl(key) > 0, f"{key} never expires"


def test_a_busy_key_defers_and_the_audit_trail_says_why(
        configure, upstream: FaultServer) -> None:
    """A delivery finding its key held by another delivery calls nothing and is recorded as
    an idempotency wait, not as a rate-limit block."""
    configure([integration(upstream.url, id="alpha")])
    rt = get_runtime()
    spec = JobSpec(job_id="busy-job-1", integration="alpha", method="GET", path="/orders/1",
                   idempotency_key="order-busy")
    rt.audit.job_queued(spec.job_id, "alpha", "GET", "/orders/1", None, "order-busy")
    rt.idempotency.claim("alpha", "order-busy", "other-job", 30_000, "other-job:0:1:0")
    step = run_job(spec, Progress(), rt)
    assert (step.status, step.countdown_s, step.strategy) == ("defer", 1.0, "idempotency-wait")
    assert step.reason.startswith(
        "Another delivery of the same idempotency key is running for another 1.0 s; deferring "
        "without spending an attempt")
    assert upstream.requests() == []
    rows = wait_rows("SELECT kind, decision, delay_ms, delay_source, strategy, error_message "
                     "FROM attempts WHERE job_id = :job", job="busy-job-1")
    assert rows == [{"kind": "deferral", "decision": "defer", "delay_ms": 1000,
                     "delay_source": "idempotency-busy", "strategy": "idempotency-wait",
                     "error_message": "Another delivery of the same idempotency key is "
                                      "running."}]


@pytest.mark.parametrize("key", [None, "caller-key-1"], ids=["generated", "caller"])
def test_a_redelivered_job_that_succeeded_stays_succeeded(
        key: str | None, configure, upstream: FaultServer, start_worker) -> None:
    """The same message again (a redelivery after a broker restart, say) is answered from the
    success record without a call, and the job's status stays `succeeded`: `duplicate` is for
    another job reusing the key."""
    from recovery.core.request import build_job
    from recovery.engine.producer import publish_job

    env = configure([integration(upstream.url)])
    start_worker(env)
    rt = get_runtime()
    job = build_job(rt.registry, "shop", "POST", "/orders", json={"n": 1}, idempotency_key=key)
    publish_job(job)
    assert wait_for_status(rt.engine, job.job_id, FINAL)["status"] == "succeeded"
    publish_job(job)  # the same message, same job id
    rows = wait_rows("SELECT decision FROM attempts WHERE job_id = :job_id AND kind = "
                     "'duplicate'", job_id=job.job_id)
    assert rows[0]["decision"] == "duplicate"
    assert wait_for_status(rt.engine, job.job_id, FINAL)["status"] == "succeeded"
    assert len([r for r in upstream.requests() if r["path"] == "/orders"]) == 1
