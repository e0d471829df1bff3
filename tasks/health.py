"""`tasks.health.check`: one integration's health check, scheduled by Celery Beat."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task

from recovery.celery_app import app
from recovery.config.registry import UnknownIntegrationError
from recovery.engine.runtime import get_runtime
from recovery.ops.health import run_health_check

log = structlog.get_logger(__name__)

# Every worker imports this module (celery_app `include`), so breaker trips in any worker
# process raise the `breaker_opened` alert.


@app.task(bind=True, name="tasks.health.check", ignore_result=True)
def check(self: Task, integration_id: str) -> dict[str, Any]:
    runtime = get_runtime()
    with structlog.contextvars.bound_contextvars(integration=integration_id,
                                                 task_id=self.request.id):
        try:
            integration = runtime.registry.get(integration_id)
        except UnknownIntegrationError as exc:
            log.warning("health_check_skipped", reason=str(exc))
            return {"integration": integration_id, "skipped": str(exc)}
        if integration.health_check is None:
            reason = f"Integration {integration_id!r} has no health_check configured."
            log.warning("health_check_skipped", reason=reason)
            return {"integration": integration_id, "skipped": reason}
        return run_health_check(integration, runtime).to_dict()
