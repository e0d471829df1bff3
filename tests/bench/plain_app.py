"""The baseline of the overhead benchmark: a plain Celery task, as a team would write it without
this project (`autoretry_for`, `retry_backoff`, `acks_late`, `requests.get`).

Same broker (Redis), same JSON serializer, late acks and prefetch as `recovery.celery_app`, so the
only difference measured is the task body and what our app adds around it. Configured by the
environment, read once at import:

    BENCH_REDIS_URL      broker (default redis://127.0.0.1:6379/15)
    BENCH_PREFIX         kombu global key prefix (the benchmark's throw-away prefix)
    BENCH_PLAIN_QUEUE    queue name (default "plain")

Worker: `celery -A tests.bench.plain_app worker -P prefork -c 2 -Q plain`.
"""

from __future__ import annotations

import os

import requests
from celery import Celery

QUEUE = os.environ.get("BENCH_PLAIN_QUEUE", "plain")
TASK_NAME = "bench.plain.get"

def plain_celery(name: str, broker_url: str, key_prefix: str, queue: str) -> Celery:
    """A Celery app as a team would configure one without this project, on the same broker
    settings as `recovery.celery_app` (JSON, late acks, prefetch 1, no results)."""
    plain = Celery(name)
    plain.conf.update(
        broker_url=broker_url,
        broker_transport_options={"visibility_timeout": 3600, "global_keyprefix": key_prefix},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
        timezone="UTC",
        enable_utc=True,
    )
    return plain


app = plain_celery("plain-bench", os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
                   os.environ.get("BENCH_PREFIX", "bench-plain:"), QUEUE)

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
