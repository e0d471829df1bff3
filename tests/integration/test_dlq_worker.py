"""Dead letters made by a real worker: complete envelopes, no secrets, and a working replay."""

from __future__ import annotations

import json

import pytest
import redis

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.dlq.store import EntryFilter, decode_body
from recovery.engine.runtime import get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.test_dlq_support import raw_list
from tests.integration.test_job_flow import integration

SECRETS = ("job-s3cret-bearer", "p4ram-s3cret", "b0dy-s3cret", "int3g-s3cret")
FINAL = {"succeeded", "failed", "dead", "degraded"}


def test_exhausted_and_non_retryable_jobs_reach_the_dlq_complete_and_without_secrets(
        broker: str, configure, upstream: FaultServer, start_worker, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_API_KEY", "int3g-s3cret")
    retry = {"max_attempts": 2, "initial_delay_ms": 100, "backoff_factor": 2,
             "max_delay_ms": 1000, "jitter": 0}
    audit = {"show_params": ["page"], "show_headers": ["X-Trace"], "show_body_fields": ["n"]}
    env = configure([integration(upstream.url, retry=retry, audit=audit,
                                 headers={"X-Api-Key": "${SHOP_API_KEY}"})])
    upstream.set_mode("5xx", status=500)
    start_worker(env)
    engine = get_runtime().engine
    exhausted = recovery.enqueue(
        "shop", "POST", "/orders", json={"password": "b0dy-s3cret", "n": 1},
        params={"api_key": "p4ram-s3cret", "page": "2"}, idempotency_key="order-77",
        headers={"Authorization": "Bearer job-s3cret-bearer", "X-Trace": "t-1"})
    assert wait_for_status(engine, exhausted, FINAL)["status"] == "dead"
    upstream.set_script([400])
    refused = recovery.enqueue("shop", "GET", "/orders/9")
    assert wait_for_status(engine, refused, FINAL)["status"] == "dead"

    raws = raw_list(redis_client, get_runtime(), "dlq")
    sealed = [decode_body(raw)[0] for raw in raws]
    first, second = ({k: v for k, v in body.items() if k != "original"} for body in sealed)
    texts = [json.dumps(first), json.dumps(second)]
    assert not [s for s in SECRETS for text in texts if s in text]
    # Without RECOVERY_ENCRYPTION_KEYS the original is kept as given (as in the work queue).
    original = sealed[0]["original"]
    assert original["format"] == "plain"
    assert original["job"]["json"] == {"password": "b0dy-s3cret", "n": 1}
    assert original["job"]["params"] == {"api_key": "p4ram-s3cret", "page": "2"}
    assert (first["job_id"], second["job_id"]) == (exhausted, refused)
    assert first["task_name"] == "tasks.integration.call" and first["integration"] == "shop"
    assert (first["method"], first["path"]) == ("POST", "/orders")
    assert first["body"] == {"n": 1, "[REDACTED]": "object of 2 keys, 32 bytes"}
    assert first["params"] == {"api_key": "[REDACTED]", "page": "2"}
    assert first["headers"] == {"Authorization": "Bearer [REDACTED]", "X-Trace": "t-1"}
    assert first["idempotency_key"] == "order-77" and first["replay_count"] == 0
    assert (first["error_categories"], first["last_status"], first["attempts"]) == (
        ["server_error"], 500, 2)
    assert (second["error_categories"], second["last_status"], second["attempts"]) == (
        ["client_error"], 400, 1)
    for envelope in (first, second):
        assert envelope["message"] and envelope["first_enqueued_at"] and envelope["dead_at"]

    upstream.set_mode("ok")
    report = replay_dlq(get_runtime(), ReplayOptions(filter=EntryFilter(job_id=exhausted)))
    assert report.summary()["replayed"] == 1
    job = wait_for_status(engine, exhausted, {"succeeded"})
    assert job["replay_count"] == 1
    sent = [r for r in upstream.requests() if r["status"] == 200]
    assert len(sent) == 1 and sent[0]["idempotency_key"] == "order-77"
    assert sent[0]["headers"].get("X-Api-Key") == "int3g-s3cret"
    assert sent[0]["headers"].get("Authorization") == "Bearer job-s3cret-bearer"
    assert upstream.successes_by_key() == {"order-77": 1}
    replay_dlq(get_runtime(), ReplayOptions(filter=EntryFilter(job_id=refused)))
    assert wait_for_status(engine, refused, {"succeeded"})["replay_count"] == 1
    assert raw_list(redis_client, get_runtime(), "dlq") == []
