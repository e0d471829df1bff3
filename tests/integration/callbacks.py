"""Test-only callback tasks, loaded into real workers with `--include tests.integration.callbacks`.

They stand for a producer's own tasks: each records the outcome it received (and its task id)
in a Redis list under the test session's key prefix, which the test reads with a deadline.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Task

from recovery.celery_app import app

SUCCESS_TASK = "testapp.callbacks.charge_done"
FAILURE_TASK = "testapp.callbacks.charge_failed"
QUEUE = "callbacks"


def calls_key() -> str:
    return f"{os.environ['RECOVERY_REDIS_PREFIX']}test-callback-calls"


def _record(task: Task, which: str, outcome: Any) -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        client.rpush(calls_key(), json.dumps({"callback": which, "task_id": task.request.id,
                                              "outcome": outcome}))
        client.expire(calls_key(), 600)
    finally:
        client.close()


@app.task(bind=True, name=SUCCESS_TASK)
def charge_done(self: Task, outcome: dict[str, Any]) -> None:
    _record(self, "on_success", outcome)


@app.task(bind=True, name=FAILURE_TASK)
def charge_failed(self: Task, outcome: dict[str, Any]) -> None:
    _record(self, "on_failure", outcome)
