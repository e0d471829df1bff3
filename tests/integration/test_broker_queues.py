"""What the broker module reads and writes against the real brokers: queue depths on Redis and
RabbitMQ, and dead letters written by the state client exactly as kombu writes them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from kombu import Connection, Queue

import recovery
from recovery.config.broker import push_dead_letter, queue_depths
from recovery.config.settings import load_settings
from recovery.demo.faultserver import FaultServer
from recovery.dlq.store import QueueList, decode_body
from recovery.engine.runtime import get_runtime
from tests.integration.test_job_flow import integration


def _without_tag(raw: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(raw)
    del entry["properties"]["delivery_tag"]  # unique per message
    return entry


def test_a_dead_letter_is_written_as_kombus_redis_transport_writes_it(
        client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    message = {"job_id": "j-1", "text": "é ünïcode", "n": [1, 2.5, None]}
    url = client.connection_pool.connection_kwargs
    with Connection(f"redis://127.0.0.1:{url['port']}/{url['db']}",
                    transport_options={"global_keyprefix": prefix}) as connection:
        connection.Producer().publish(message, exchange="", routing_key="dlq",
                                      serializer="json", delivery_mode=2,
                                      declare=[Queue("dlq", routing_key="dlq")])
    monkeypatch.setenv("RECOVERY_REDIS_PREFIX", prefix)
    push_dead_letter(client, load_settings(), "dlq", message)
    ours, kombus = client.lrange(f"{prefix}dlq", 0, -1)  # newest first
    assert _without_tag(ours) == _without_tag(kombus)
    assert decode_body(ours) == decode_body(kombus) == (message, None)
    assert [entry.data for entry in QueueList(client, prefix).entries()] == [message, message]


def test_queue_depths_come_from_the_broker_and_the_dlq_from_the_state_store(
        broker: str, configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    configure([integration(upstream.url)])
    rt = get_runtime()
    for n in range(3):
        recovery.enqueue("shop", "GET", f"/waiting/{n}")
    push_dead_letter(rt.redis, rt.settings, "dlq", {"job_id": "dead-1"})
    depths = queue_depths(rt.settings, rt.redis, ("integrations", "maintenance"),
                          ("dlq", "dlq.quarantine"))
    assert depths == {"integrations": 3, "maintenance": 0, "dlq": 1, "dlq.quarantine": 0}
    assert upstream.requests() == []
