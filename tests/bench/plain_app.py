"""The baseline of the overhead benchmark: a plain Celery task, as a team would write it without
this project (`autoretry_for`, `retry_backoff`, `acks_late`, `requests.get`).

Same broker (Redis), same JSON serializer, late acks and prefetch as `recovery.celery_app`, so the
only difference measured is the task body and what our app adds around it. Configured by the
environment, read once at import:

    BENCH_REDIS_URL      broker (default redis://127.0.0.1:6379/15)
    BENCH_BROKER_URL     broker instead of BENCH_REDIS_URL when set (`amqp://...`: RabbitMQ,
                         configured as `recovery.config.broker` configures ours there)
    BENCH_PREFIX         kombu global key prefix (the benchmark's throw-away prefix)
    BENCH_PLAIN_QUEUE    queue name (default "plain")
    BENCH_PLAIN_PREFETCH worker_prefetch_multiplier (default 1, as ours; Celery's own is 4)
    BENCH_PLAIN_POOL     connections the pooled session keeps (default 64, one per thread)

Worker: `celery -A tests.bench.plain_app worker -P prefork -c 2 -Q plain`.
"""

from __future__ import annotations

import os

import requests
import requests.adapters
from celery import Celery
from kombu import Exchange, Queue

QUEUE = os.environ.get("BENCH_PLAIN_QUEUE", "plain")
TASK_NAME = "bench.plain.get"

def plain_celery(name: str, broker_url: str, key_prefix: str, queue: str,
                 prefetch: int = 1) -> Celery:
    """A Celery app as a team would configure one without this project, on the same broker
    settings as `recovery.celery_app` (JSON, late acks, prefetch 1 unless told, no results).
    On RabbitMQ (`amqp://`) as ours there: a durable quorum queue on a topic exchange of its own
    name, publisher confirms, quorum-queue detection (per-consumer prefetch)."""
    plain = Celery(name)
    if broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp"):
        plain.conf.update(
            broker_transport_options={"confirm_publish": True},
            task_queues=(Queue(queue, Exchange(queue, type="topic", durable=True),
                               routing_key=queue, durable=True,
                               queue_arguments={"x-queue-type": "quorum"}),),
            worker_detect_quorum_queues=True,
            broker_native_delayed_delivery_queue_type="quorum",
            task_default_queue_type="quorum",
            task_create_missing_queue_type="quorum",
        )
    else:
        plain.conf.broker_transport_options = {"visibility_timeout": 3600,
                                               "global_keyprefix": key_prefix}
    plain.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=prefetch,
        task_default_queue=queue,
        timezone="UTC",
        enable_utc=True,
    )
    return plain


SESSION_TASK_NAME = "bench.plain.session_get"

app = plain_celery("plain-bench", os.environ.get("BENCH_BROKER_URL")
                   or os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
                   os.environ.get("BENCH_PREFIX", "bench-plain:"), QUEUE,
                   int(os.environ.get("BENCH_PLAIN_PREFETCH", "1")))

_session = requests.Session()  # the strong baseline: one pooled session, kept-alive sockets
_size = int(os.environ.get("BENCH_PLAIN_POOL", "64"))
_session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=_size))

@app.task(
    name=TASK_NAME,
    autoretry_for=(requests.RequestException,),
    retry_backoff=True,
    max_retries=3,
    acks_late=True,
)
def get(url: str) -> int:
    """GET `url`; any requests error (a 5xx or 4xx through `raise_for_status` too) is retried."""
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return response.status_code


@app.task(
    name=SESSION_TASK_NAME,
    autoretry_for=(requests.RequestException,),
    retry_backoff=True,
    max_retries=3,
    acks_late=True,
)
def session_get(url: str) -> int:
    """GET `url` through the process's pooled session (the strong baseline of the fast path)."""
    response = _session.get(url, timeout=30)
    response.raise_for_status()
    return response.status_code
