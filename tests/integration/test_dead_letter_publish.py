"""A dead letter Redis refuses leaves the job unacknowledged and unrecorded as dead."""

from __future__ import annotations

import pytest
from celery.exceptions import Reject
from redis.exceptions import ConnectionError as RedisConnectionError

import tasks.integration
from recovery.audit.queries import get_job
from recovery.demo.faultserver import FaultServer
from recovery.dlq.envelope import Envelope
from recovery.engine.producer import build_job
from recovery.engine.runtime import get_runtime
from tests.integration.test_job_flow import integration


def refuse(_: Envelope) -> None:
    """Dead letters are written to the state store's Redis on every broker."""
    raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


def test_failed_dead_letter_publish_rejects_for_redelivery(
        configure, upstream: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    configure([integration(upstream.url)])
    upstream.set_script([400])
    runtime = get_runtime()
    job = build_job(runtime.registry, "shop", "GET", "/bad")
    monkeypatch.setattr("recovery.dlq.park.publish", refuse)
    with pytest.raises(Reject) as rejected:
        tasks.integration.call.run(job=job.to_message())
    assert rejected.value.requeue is True
    assert "dead-letter queue" in str(rejected.value.reason)
    stored = get_job(runtime.engine, job.job_id)
    assert stored is not None and stored["status"] != "dead"
