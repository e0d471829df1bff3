"""Everything that differs between the brokers we run on (Redis and RabbitMQ), in one place.

What the rest of the code asks of a broker goes through here: which broker a URL names, the
Celery settings that go with it (transport options, queue declarations), how deep our queues
are, and where dead letters are written.

* **Redis** (`redis://`, `rediss://`, `unix://`): queues are Redis lists under the key prefix
  (`global_keyprefix`). A message not acknowledged within `visibility_timeout` is delivered
  again, so every countdown stays below it (the settings check refuses anything else).
* **RabbitMQ** (`amqp://`, `amqps://`, `pyamqp://`): the work queues are *quorum* queues
  (replicated, `x-queue-type: quorum`) on topic exchanges, publishes wait for the broker's
  confirm (`confirm_publish`), acks are late as on Redis. Quorum queues support neither message
  priorities (we use none) nor global QoS: Celery detects quorum queues
  (`worker_detect_quorum_queues`) and uses a per-consumer prefetch instead. There is no
  visibility timeout; RabbitMQ instead closes a channel whose delivery stays unacknowledged
  longer than its `consumer_timeout` (30 min by default), so a countdown must never be held by
  a worker: Celery's native delayed delivery (declared by the worker at start, on quorum
  queues bound to topic exchanges) parks a countdown in the broker's `celery_delayed_*`
  queues and routes it back when it is due. A job itself still holds its message while it
  runs (late ack): every job must end well within `consumer_timeout`. Native delayed
  delivery counts whole seconds: a retry delay under one second waits one second
  (`delivery_countdown`).
* **The dead-letter queue stays in Redis (the state store) whatever the broker**: it is a list
  that operators and the capped replay read in place (`recovery.dlq.store`), and it must not
  be consumed like a work queue. On a Redis broker it is the broker's own `dlq` list, as
  before; on RabbitMQ it is the same list in the state store. Entries are written by the
  state client in kombu's Redis message format (`push_dead_letter`), so listing, replay, caps
  and purge work unchanged, also on a Redis Cluster or a Sentinel master.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from kombu import Connection, Exchange, Queue

from recovery.config.queues import DLQ_SIDE_QUEUES, WORK_QUEUES
from recovery.config.setting_urls import AMQP_SCHEMES, REDIS_SCHEMES, url_scheme
from recovery.config.settings import Settings

BrokerKind = Literal["redis", "amqp"]
QUORUM = {"x-queue-type": "quorum"}


def kind_of(url: str) -> BrokerKind | None:
    """`redis` or `amqp` by the URL's scheme; None for a scheme we do not run on."""
    scheme = url_scheme(url)
    if scheme in AMQP_SCHEMES:
        return "amqp"
    return "redis" if scheme in REDIS_SCHEMES else None


def broker_url(settings: Settings) -> str:
    """BROKER_URL, or REDIS_URL when it is not set (one Redis for queues and state)."""
    return settings.broker_url or settings.redis_url


def broker_kind(settings: Settings) -> BrokerKind:
    kind = kind_of(broker_url(settings))
    assert kind is not None, "settings validate the broker URL"
    return kind


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options for the broker."""
    if broker_kind(settings) == "amqp":
        return {"confirm_publish": True}
    return {"visibility_timeout": settings.visibility_timeout_s,
            "global_keyprefix": settings.redis_key_prefix}


def declare_queue(settings: Settings, name: str) -> Queue:
    """A work queue as the broker wants it: on RabbitMQ a durable quorum queue on a topic
    exchange of its own name (native delayed delivery needs a non-direct exchange)."""
    if broker_kind(settings) == "amqp":
        return Queue(name, Exchange(name, type="topic", durable=True), routing_key=name,
                     durable=True, queue_arguments=dict(QUORUM))
    return Queue(name)


def celery_broker_config(settings: Settings, queues: Sequence[str]) -> dict[str, Any]:
    """The Celery settings that depend on the broker."""
    config: dict[str, Any] = {
        "broker_url": broker_url(settings),
        "broker_transport_options": transport_options(settings),
        "task_queues": tuple(declare_queue(settings, name) for name in queues),
    }
    if broker_kind(settings) == "amqp":
        config.update({
            "worker_detect_quorum_queues": True,
            "broker_native_delayed_delivery_queue_type": "quorum",
            "task_default_queue_type": "quorum",
            "task_create_missing_queue_type": "quorum",
        })
    return config


def max_countdown_s(settings: Settings) -> float:
    """Every countdown stays below the broker's visibility timeout, or Redis redelivers early."""
    return settings.visibility_timeout_s * 0.9


def delivery_countdown(settings: Settings, countdown_s: float | None) -> float | None:
    """The countdown to publish a retry with. Native delayed delivery on RabbitMQ counts whole
    seconds and refuses a countdown under one second (kombu's `calculate_routing_key` gets
    `int(countdown)`, which is 0), so a positive delay below a second waits one second there;
    longer delays are exact (the broker holds the whole seconds, the worker the fraction, by
    the message's ETA). On Redis every countdown is kept as it is."""
    if countdown_s is not None and broker_kind(settings) == "amqp" and 0 < countdown_s < 1:
        return 1.0
    return countdown_s


def broker_connection(settings: Settings) -> Connection:
    """A new kombu connection to the broker (the caller closes it)."""
    return Connection(broker_url(settings), transport_options=transport_options(settings),
                      connect_timeout=5)


def dlq_entry(queue: str, message: dict[str, Any]) -> bytes:
    """One entry of a DLQ-side list, in the format kombu's Redis transport writes (and
    `recovery.dlq.store` reads): a JSON envelope around the base64 JSON body."""
    body = base64.b64encode(json.dumps(message).encode()).decode()
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {},
        "properties": {"delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": queue},
                       "delivery_tag": str(uuid.uuid4())},
    }).encode()


def push_dead_letter(client: Any, settings: Settings, queue: str,
                     message: dict[str, Any]) -> None:
    """Append `message` to a DLQ-side list (`dlq`, `dlq.quarantine`) in the state store, the
    newest at the head as kombu would. Written by the state client itself rather than through
    kombu, so it works on every state store: one Redis, a Sentinel master, or a Redis Cluster
    (one key, one slot), whatever the broker."""
    client.lpush(f"{settings.redis_key_prefix}{queue}", dlq_entry(queue, message))


def queue_depths(settings: Settings, state: Any, work_queues: Sequence[str],
                 dlq_queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each work queue (asked of the broker) and each DLQ-side queue (the
    lists in the state store, read with the client `state`), by name. A work queue nobody
    declared yet counts 0."""
    depths = _depths(broker_connection(settings), work_queues,
                     passive=broker_kind(settings) == "amqp")
    depths.update({name: int(state.llen(f"{settings.redis_key_prefix}{name}"))
                   for name in dlq_queues})
    return depths


def all_queue_depths(settings: Settings, state: Any) -> dict[str, int]:
    """`queue_depths` of every queue of the system (`config.queues.ALL_QUEUES`)."""
    return queue_depths(settings, state, WORK_QUEUES, DLQ_SIDE_QUEUES)


def _depths(connection: Connection, names: Sequence[str], *, passive: bool) -> dict[str, int]:
    """On Redis a plain declare writes nothing (and kombu's passive check looks for unprefixed
    keys, so with `global_keyprefix` it calls every queue missing); on RabbitMQ a passive
    declare never creates a queue, and a missing one closes the channel."""
    depths: dict[str, int] = {}
    with connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.channel()
        for name in names:
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=passive)
                                   .message_count)
            except connection.channel_errors:
                depths[name] = 0
                channel = connection.channel()
    return depths
