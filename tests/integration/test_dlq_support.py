"""Helpers shared by the DLQ integration tests (this module holds no tests of its own)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from recovery.audit.writer import DeadLetterRecord
from recovery.core.message import JobSpec, new_job_id, parse_time, utc_now_iso
from recovery.dlq.envelope import Envelope, envelope_for
from recovery.dlq.park import publish
from recovery.dlq.store import decode_body
from recovery.engine.runtime import Runtime, get_runtime

UNREACHABLE = "http://127.0.0.1:9"


def integration_entry(integration_id: str) -> dict[str, Any]:
    return {"id": integration_id, "base_url": UNREACHABLE, "timeout_ms": 2000,
            "circuit_breaker": {"threshold": 5, "reset_timeout_ms": 60000}, "fallbacks": [],
            "rate_limit": {"window_ms": 1000, "max_requests": 1000},
            # The envelope's copy of a job shows only what this allows (make_envelope's fields)
            "audit": {"show_body_fields": ["n"], "show_params": ["page"],
                      "show_headers": ["X-Team"]}}


@pytest.fixture
def dlq_runtime(configure: Callable[..., dict[str, str]],
                redis_client: redis.Redis) -> Runtime:
    """Integrations `shop` and `crm` (never called: no worker runs), DLQ_MAX_RETRIES=3."""
    configure([integration_entry("shop"), integration_entry("crm")], DLQ_MAX_RETRIES="3")
    return get_runtime()


def make_envelope(integration: str = "shop", *, categories: tuple[str, ...] = ("server_error",),
                  replay_count: int = 0, dead_at: str | None = None) -> Envelope:
    job = JobSpec(job_id=new_job_id(), integration=integration, method="POST", path="/orders",
                  json={"n": 1}, params={"page": "1"}, headers={"X-Team": "blue"},
                  idempotency_key=f"key-{uuid.uuid4().hex}", enqueued_at=utc_now_iso(),
                  replay_count=replay_count)
    return envelope_for(job, categories=list(categories), last_status=503, message="HTTP 503",
                        attempts=3, dead_at=dead_at or utc_now_iso())


def park_all(envelopes: list[Envelope], rt: Runtime | None = None) -> list[Envelope]:
    """Publish to `dlq` (oldest first); with `rt`, also write the audit rows a worker would."""
    for envelope in envelopes:
        publish(envelope)
        if rt is not None:
            record_dead(rt, envelope)
    return envelopes


def record_dead(rt: Runtime, envelope: Envelope) -> None:
    rt.audit.job_queued(envelope.job_id, envelope.integration, envelope.method, envelope.path,
                        envelope.params, envelope.idempotency_key,
                        replay_count=envelope.replay_count)
    rt.audit.dead_letter(DeadLetterRecord(
        job_id=envelope.job_id, integration=envelope.integration,
        task_name=envelope.task_name, error_categories=envelope.error_categories,
        last_status=envelope.last_status, message=envelope.message, attempts=envelope.attempts,
        first_enqueued_at=parse_time(envelope.first_enqueued_at), envelope=envelope.view(),
        replay_count=envelope.replay_count, dead_at=parse_time(envelope.dead_at)))
    rt.audit.job_status(envelope.job_id, "dead", finished=True)


def key(rt: Runtime, queue: str) -> str:
    return f"{rt.settings.redis_key_prefix}{queue}"


def raw_list(client: redis.Redis, rt: Runtime, queue: str) -> list[bytes]:
    """A queue's raw entries, oldest first."""
    return list(reversed(client.lrange(key(rt, queue), 0, -1)))


def bodies(client: redis.Redis, rt: Runtime, queue: str) -> list[Any]:
    decoded = []
    for raw in raw_list(client, rt, queue):
        body, problem = decode_body(raw)
        assert problem is None, problem
        decoded.append(body)
    return decoded


def dlq_ids(client: redis.Redis, rt: Runtime) -> list[str]:
    return [body["job_id"] for body in bodies(client, rt, "dlq")]


def work_jobs(client: redis.Redis, rt: Runtime) -> list[dict[str, Any]]:
    """The `job` argument of every task message in the work queue, oldest first."""
    return [body[1]["job"] for body in bodies(client, rt, "integrations")]


def kombu_message(body: str, *, base64_body: bool = False) -> bytes:
    """A message in kombu's Redis format with this (possibly broken) body text."""
    import base64

    encoded = base64.b64encode(body.encode()).decode() if base64_body else body
    properties: dict[str, Any] = {"delivery_tag": uuid.uuid4().hex}
    if base64_body:
        properties["body_encoding"] = "base64"
    return json.dumps({"body": encoded, "content-encoding": "utf-8",
                       "content-type": "application/json", "headers": {},
                       "properties": properties}).encode()
