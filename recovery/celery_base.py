"""The bare Celery app: configuration only (JSON, late acks, routing by `task_routes`, a thread
pool), no signal handlers or worker bootsteps.

Producers (`recovery.enqueue`, the DLQ's replay, a workflow's next step, a job's callback)
publish through it and stay light. `recovery.celery_app` is the same app wired for the
processes `celery -A recovery.celery_app worker|beat|flower` starts.

`celery -A recovery.celery_app worker -Q integrations` runs jobs on WORKER_CONCURRENCY threads
(default 64); `celery -A recovery.celery_app worker -Q maintenance -c 2` runs the health checks
and the capped replay beside it, so a backlog of jobs never delays a health check. No worker
consumes `dlq`: dead letters are envelopes for operators and the capped replay, not tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.worker.request import Request

from recovery.config.broker import celery_broker_config
from recovery.config.queues import MAINTENANCE_QUEUE, TASK_MODULES, WORK_QUEUE
from recovery.config.settings import Settings, get_settings
from recovery.core.crypto import SERIALIZER, register_serializer

BEAT_SCHEDULER = "beat_schedule:Scheduler"

TASK_ROUTES = {
    "tasks.integration.*": {"queue": WORK_QUEUE},
    "tasks.workflow.*": {"queue": WORK_QUEUE},
    "tasks.health.*": {"queue": MAINTENANCE_QUEUE},
    "tasks.dlq.*": {"queue": MAINTENANCE_QUEUE},
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting we rely on, in one place, derived from validated settings."""
    return {
        # broker_url, broker_transport_options, task_queues: per broker (RabbitMQ or Redis)
        **celery_broker_config(settings, (WORK_QUEUE, MAINTENANCE_QUEUE)),
        "broker_connection_retry_on_startup": True,
        # JSON, wrapped in Fernet when RECOVERY_ENCRYPTION_KEYS is set (recovery.core.crypto).
        "task_serializer": SERIALIZER if settings.encryption_keys else "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json", SERIALIZER],  # never pickle
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        # A dead or failed job ends as FAILURE after it is parked: its message is acked then,
        # never delivered again (Celery's default, relied on by recovery.engine.outcome).
        "task_acks_on_failure_or_timeout": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # API calls wait far more than they compute: threads by default, many of them
        # (WORKER_CONCURRENCY). Choose another pool with WORKER_POOL: once an app configures
        # a pool, Celery takes a `-P prefork` on the command line for its own default and
        # ignores it (`-P solo` and `-c N` do work).
        "worker_pool": settings.worker_pool,
        "worker_concurrency": settings.worker_concurrency,
        # Off by default: Flower (and `celery control enable_events`) turns them on while
        # someone watches. Three events per task, published by the worker's main process.
        "worker_send_task_events": settings.task_events,
        # Flower learns a task's name from task-sent or task-received, and a worker sends
        # task-received only once Flower has switched its events on: without task-sent, a job
        # received before that shows in Flower without a name. It costs a producer about a
        # fifth of its CPU per enqueue (one more publish): TASK_SENT_EVENTS=false without Flower.
        "task_send_sent_event": settings.task_sent_events,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": WORK_QUEUE,
        "task_routes": TASK_ROUTES,
        "timezone": "UTC",
        "enable_utc": True,
        "include": list(TASK_MODULES),
        # Beat builds its schedule from the registry when it starts (`beat_schedule`), so
        # importing this app (a producer, a worker) never loads the registry or the guard.
        "beat_scheduler": BEAT_SCHEDULER,
    }


class RedactedRequest(Request):
    """A task request whose inspect replies (`scheduled`, `reserved`, `active`, `query_task`)
    show the producer's argsrepr/kwargsrepr, never the raw arguments with their secrets:
    Flower's worker page and `/api/workers` print these replies."""

    def info(self, safe: bool = False) -> dict[str, Any]:
        return dict(super().info(safe=True))


class RedactedTask(Task):
    Request = RedactedRequest


def make_celery(settings: Settings) -> Celery:
    application = Celery(settings.service_name, task_cls=RedactedTask)
    application.conf.update(celery_config(settings))
    return application


# Producers send with it when RECOVERY_ENCRYPTION_KEYS is set; workers also keep what it cannot
# open (`recovery.celery_app`).
register_serializer()
app = make_celery(get_settings())
