"""`tasks.workflow.step` runs one step of a workflow run, a thin adapter to
`recovery.engine.workflows`: the step's outcome is recorded and the next steps are sent before
the message is acknowledged (late acks), so a worker that dies mid-step loses nothing; if it
died after recording but before sending, the message comes again, finds the step finished,
and plans the run once more, which sends the queued steps whose message never left. While
Redis or PostgreSQL cannot serve, or the workflow definitions fail to load (an edited file),
the task is retried rather than failed: a failed task would be acknowledged and its run would
wait forever.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.exceptions import Retry
from structlog.contextvars import bound_contextvars

from recovery.celery_app import app
from recovery.config.broker import delivery_countdown, max_countdown_s
from recovery.config.settings import get_settings
from recovery.config.workflows import WorkflowError
from recovery.core.message import Progress
from recovery.engine.outcome import describe, is_infrastructure
from recovery.engine.runtime import Runtime, get_runtime
from recovery.engine.workflows import store
from recovery.engine.workflows.execute import Again, failed, run_step
from recovery.engine.workflows.runs import (
    WorkflowInputError,
    dispatch,
    finish_step,
    get_workflow,
    step_reprs,
)

INFRA_RETRY_S = 5.0
CONFIG_RETRY_S = 60.0
log = structlog.get_logger(__name__)


@app.task(bind=True, name="tasks.workflow.step", max_retries=None, acks_late=True)
def step(self: Task, run_id: str, step_id: str, progress: dict[str, Any] | None = None) -> str:
    try:
        with bound_contextvars(run_id=run_id, step=step_id, task_id=self.request.id):
            return _run(self, run_id, step_id, progress)
    except Retry:
        raise
    except (WorkflowError, WorkflowInputError) as exc:  # definitions changed under a run: wait
        log.error("workflow_definition_invalid", run_id=run_id, step=step_id, error=str(exc))
        raise self.retry(countdown=_capped(CONFIG_RETRY_S)) from None
    except Exception as exc:
        if is_infrastructure(exc):
            raise self.retry(countdown=_capped(INFRA_RETRY_S)) from None
        raise


def _capped(seconds: float) -> float:
    """Below the broker's visibility timeout, like every countdown (else Redis redelivers)."""
    return min(seconds, max_countdown_s(get_settings()))


def _run(task: Task, run_id: str, step_id: str, progress: dict[str, Any] | None) -> str:
    runtime = get_runtime()
    start = store.start_step(runtime.engine, run_id, step_id)
    if start is None:
        return _replan(runtime, run_id)
    workflow = get_workflow(runtime, start.workflow)
    state = Progress.from_message(progress) if progress is not None else None
    try:
        result = run_step(runtime, run_id, workflow.step(step_id), start, state)
    except Exception as exc:  # an outage is retried above; anything else fails the step
        if is_infrastructure(exc):
            raise
        result = failed(f"Step {step_id!r} raised an unexpected error ({describe(exc)}).")
    if isinstance(result, Again):
        raise task.retry(kwargs={"run_id": run_id, "step_id": step_id,
                                 "progress": result.progress.to_message()},
                         countdown=delivery_countdown(get_settings(), result.countdown_s),
                         **step_reprs(workflow, run_id, step_id))
    finish_step(runtime, workflow, run_id, step_id, result)
    return f"{result.status}" + (f": {result.error}" if result.error else "")


def _replan(runtime: Runtime, run_id: str) -> str:
    """A step message for a finished step (a redelivery): send what its run still lacks."""
    run = store.get_run(runtime.engine, run_id)
    if run is None:
        return "nothing to do: no such run"
    workflow = get_workflow(runtime, run["workflow"])
    dispatch(runtime, workflow, run_id,
             store.advance(runtime.engine, workflow, run_id, resend=True))
    return "nothing to do: the step already finished; its run was planned again"
