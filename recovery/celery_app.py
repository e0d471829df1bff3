"""The Celery application: JSON only, late acks, routing by `task_routes`, a thread pool.

`celery -A recovery.celery_app worker -Q integrations` runs jobs on WORKER_CONCURRENCY threads
(default 64); `celery -A recovery.celery_app worker -Q maintenance -c 2` runs the health checks
and the capped replay beside it, so a backlog of jobs never delays a health check. No worker
consumes `dlq`: dead letters are envelopes for operators and the capped replay, not tasks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, bootsteps, signals
from celery.worker.request import Request

from recovery.config.broker import celery_broker_config
from recovery.config.settings import Settings, get_settings
from recovery.core.crypto import SERIALIZER, register_serializer

WORK_QUEUE = "integrations"
MAINTENANCE_QUEUE = "maintenance"
DLQ_QUEUE = "dlq"
QUARANTINE_QUEUE = "dlq.quarantine"

TASK_MODULES = ["tasks.integration", "tasks.health", "tasks.dlq", "tasks.workflow"]

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
        "include": TASK_MODULES,
    }


class RedactedRequest(Request):
    """A task request whose inspect replies (`scheduled`, `reserved`, `active`, `query_task`)
    show the producer's argsrepr/kwargsrepr, never the raw arguments with their secrets:
    Flower's worker page and `/api/workers` print these replies."""

    def info(self, safe: bool = False) -> dict[str, Any]:
        return dict(super().info(safe=True))


class RedactedTask(Task):
    Request = RedactedRequest


def _keep_undecryptable(token: bytes) -> None:
    """A work message no key opens goes to the quarantine (still encrypted), not nowhere."""
    # Imported when a message fails to decrypt: recovery.dlq.store imports this module.
    from recovery.dlq.store import keep_undecryptable

    keep_undecryptable(token)


register_serializer(_keep_undecryptable)


def make_celery(settings: Settings) -> Celery:
    application = Celery(settings.service_name, task_cls=RedactedTask)
    application.conf.update(celery_config(settings))
    return application


app = make_celery(get_settings())


@signals.celeryd_init.connect
@signals.beat_init.connect
def _start_reporting(**_: Any) -> None:
    """Sentry (when SENTRY_DSN is set) and breaker alerts, in workers and in beat."""
    # Imported when the signal fires: producers import this module and must stay light.
    from recovery.telemetry.alerts import install_breaker_alerts
    from recovery.telemetry.sentry import init_sentry

    init_sentry(get_settings())
    install_breaker_alerts()


def _install_beat_schedule() -> None:
    """The schedule comes from the registry; importing it also installs the single-beat guard."""
    # Runs at import (beat reads the schedule); beat_schedule lives outside the package.
    import beat_schedule

    app.conf.beat_schedule = beat_schedule.beat_schedule


_install_beat_schedule()


@signals.worker_init.connect
def _batch_audit_writes(**_: Any) -> None:
    """Worker processes buffer audit rows and hand them to the Redis spool per task."""
    # Imported when the signal fires: producers import this module and must stay light.
    from recovery.audit.spool import enable_batching

    enable_batching()


@signals.task_prerun.connect
def _fresh_log_context(**_: Any) -> None:
    """A pool thread runs job after job: nothing bound to the log context by one may show
    on the next one's lines."""
    import structlog

    structlog.contextvars.clear_contextvars()


@signals.task_postrun.connect
def _commit_audit_rows(**_: Any) -> None:
    """A task's audit rows reach the Redis spool before its message is acknowledged."""
    # Imported when the signal fires: producers import this module and must stay light.
    from recovery.audit.spool import commit_all

    commit_all()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush_on_shutdown(**_: Any) -> None:
    """Buffered audit rows and metrics are sent before a worker process exits."""
    # Imported when the signal fires: producers import this module and must stay light.
    from recovery.audit.spool import close_all
    from recovery.telemetry.metrics import flush

    close_all()
    flush()


@signals.worker_process_init.connect
def _reset_runtime_after_fork(**_: Any) -> None:
    """A forked pool process must not share sockets (Redis, PostgreSQL, HTTP) with its parent."""
    # Imported when the signal fires: producers import this module and must stay light.
    from recovery.engine.runtime import reset_runtime

    reset_runtime()


@signals.setup_logging.connect
def _one_log_format(loglevel: int | str | None = None, **_: Any) -> None:
    """Workers and beat log through our formatter: Celery's own lines ("Task ... received",
    "succeeded", errors, kombu warnings) become the same redacted JSON as our events, and
    Celery installs no formatter or stdout redirect of its own. LOG_LEVEL filters our events;
    `--loglevel` filters Celery's and the other libraries' lines."""
    # Imported when the signal fires: producers import this module and must stay light.
    from recovery.telemetry.logging import configure_logging

    configure_logging(get_settings().log_level, foreign_level=loglevel or logging.WARNING)


class RequeueHeldOnReconnect(bootsteps.StartStopStep):
    """Requeue at once what this worker held when its broker connection dropped.

    On a connection loss kombu pushes the worker's unacknowledged messages (running late-ack
    tasks, retries waiting for their countdown) back to their queues, which fails when Redis
    itself is gone: they stay in the `unacked` hash until the visibility timeout. The previous
    channel still knows their delivery tags, so the next consumer start requeues them.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._previous: Any = None

    def start(self, c: Any) -> None:
        qos = getattr(c.task_consumer.channel, "qos", None)
        previous, self._previous = self._previous, qos
        held = list(getattr(previous, "_delivered", None) or ())
        if qos is None or not hasattr(qos, "restore_by_tag"):
            return
        for tag in held:
            qos.restore_by_tag(tag, leftmost=True)
        if held:
            logging.getLogger(__name__).warning(
                "Requeued %d message(s) held when the broker connection was lost.", len(held))


app.steps["consumer"].add(RequeueHeldOnReconnect)
