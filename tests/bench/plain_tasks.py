"""The baseline of the retry-amplification benchmark: a plain Celery task with `autoretry_for`,
`retry_backoff`, `max_retries=3` and `acks_late`, as a team would write it without this project.

Its own Celery app on the same Redis as ours, under the benchmark's key prefix. Outcomes are
counted in Redis so the benchmark can tell when the backlog has drained (no result backend):

    {prefix}plain:succeeded / {prefix}plain:failed   counters
    {prefix}plain:finished                           list of finish times (epoch seconds)

Configured by the environment, read once at import:

    BENCH_REDIS_URL   broker and counters (default redis://127.0.0.1:6379/15)
    BENCH_PREFIX      kombu global key prefix and counter prefix (the run's throw-away prefix)

Worker: `celery -A tests.bench.plain_tasks worker -P prefork -c 2 -Q plain-amplification`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
import requests
from celery import Task

from tests.bench.plain_app import plain_celery

QUEUE = "plain-amplification"
TASK_NAME = "bench.amplification.plain_call"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("BENCH_PREFIX", "bench-amplification:")

app = plain_celery("plain-amplification", REDIS_URL, PREFIX, QUEUE)

_client: redis.Redis | None = None


def counters() -> redis.Redis:
    """One Redis client per (forked) pool process, made on first use."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


def record(outcome: str) -> None:
    pipe = counters().pipeline()
    pipe.incr(f"{PREFIX}plain:{outcome}")
    pipe.rpush(f"{PREFIX}plain:finished", repr(time.time()))
    pipe.execute()


class CountingTask(Task):
    """Counts a task that failed for good (retries exhausted) once Celery gives up on it."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        record("failed")


@app.task(
    base=CountingTask,
    bind=True,
    name=TASK_NAME,
    autoretry_for=(requests.RequestException,),
    retry_backoff=True,
    max_retries=3,
    acks_late=True,
)
def plain_call(self: Task, url: str) -> int:
    """GET `url`; a 5xx (through `raise_for_status`) or a connection error is retried."""
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    record("succeeded")
    return response.status_code
