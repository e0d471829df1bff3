"""The Celery app as `celery -A recovery.celery_app worker|beat|flower` runs it: the bare app of
`recovery.celery_base` (its settings, queues and task routes are re-exported here) wired with
the signal handlers and the consumer bootstep that workers and beat need.

Producers never import this module: they publish through `recovery.celery_base`. Beat's
schedule and its single-beat guard load when beat starts (`beat_schedule.Scheduler`, named by
the `beat_scheduler` setting), not when this module is imported.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps, signals

from recovery.celery_base import (
    BEAT_SCHEDULER,
    TASK_ROUTES,
    RedactedRequest,
    RedactedTask,
    app,
    celery_config,
    make_celery,
)
from recovery.config.queues import (
    DLQ_QUEUE,
    MAINTENANCE_QUEUE,
    QUARANTINE_QUEUE,
    TASK_MODULES,
    WORK_QUEUE,
)
from recovery.config.settings import get_settings
from recovery.core.crypto import register_serializer

__all__ = ["BEAT_SCHEDULER", "DLQ_QUEUE", "MAINTENANCE_QUEUE", "QUARANTINE_QUEUE", "TASK_MODULES",
           "TASK_ROUTES", "WORK_QUEUE", "RedactedRequest", "RedactedTask", "app", "celery_config",
           "make_celery"]


@signals.celeryd_init.connect
@signals.beat_init.connect
def _start_reporting(**_: Any) -> None:
    """Sentry (when SENTRY_DSN is set) and breaker alerts, in workers and in beat."""
    # Imported when the signal fires: `celery flower` and tools import this module too.
    from recovery.telemetry.alerts import install_breaker_alerts
    from recovery.telemetry.sentry import init_sentry

    init_sentry(get_settings())
    install_breaker_alerts()


@signals.worker_init.connect
def _quarantine_undecryptable(**_: Any) -> None:
    """A work message no key opens goes to the quarantine (still encrypted), not nowhere.
    Only workers decode work messages; a forked pool process inherits the hook."""
    from recovery.dlq.quarantine import keep_undecryptable

    register_serializer(keep_undecryptable)


@signals.worker_init.connect
def _batch_audit_writes(**_: Any) -> None:
    """Worker processes buffer audit rows and hand them to the Redis spool per task."""
    # Imported when the signal fires: `celery flower` and tools import this module too.
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
    # Imported when the signal fires: `celery flower` and tools import this module too.
    from recovery.audit.spool import commit_all

    commit_all()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush_on_shutdown(**_: Any) -> None:
    """Buffered audit rows and metrics are sent before a worker process exits."""
    # Imported when the signal fires: `celery flower` and tools import this module too.
    from recovery.audit.spool import close_all
    from recovery.telemetry.metrics import flush

    close_all()
    flush()


@signals.worker_process_init.connect
def _reset_runtime_after_fork(**_: Any) -> None:
    """A forked pool process must not share sockets (Redis, PostgreSQL, HTTP) with its parent."""
    # Imported when the signal fires: `celery flower` and tools import this module too.
    from recovery.engine.runtime import reset_runtime

    reset_runtime()


@signals.setup_logging.connect
def _one_log_format(loglevel: int | str | None = None, **_: Any) -> None:
    """Workers and beat log through our formatter: Celery's own lines ("Task ... received",
    "succeeded", errors, kombu warnings) become the same redacted JSON as our events, and
    Celery installs no formatter or stdout redirect of its own. LOG_LEVEL filters our events;
    `--loglevel` filters Celery's and the other libraries' lines."""
    # Imported when the signal fires: `celery flower` and tools import this module too.
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
