"""Starting, advancing and replaying workflow runs, and sending their steps to the workers.

Why a scheduler of our own instead of Celery's canvas: a chord's header and body are fixed
when it is sent and its state lives in the result backend, so it can neither resume a run
from the step that failed (keeping the outputs of the steps that succeeded), nor run undo
steps in reverse completion order when a later step fails, nor skip the dependents of a
non-critical failure. Here each step is its own task (`tasks.workflow.step`, visible in
Flower with a redacted repr); when one finishes, its outcome is written with the run row
locked and every step whose dependencies are all done is sent in the same breath.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog

from recovery.config.workflow_file import load_workflows
from recovery.config.workflows import Workflow
from recovery.core.message import bounded_repr
from recovery.engine.events import WorkflowRunEnded
from recovery.engine.runtime import Runtime, get_runtime
from recovery.engine.workflows import store
from recovery.engine.workflows.plan import Plan
from recovery.engine.workflows.store import RunStateError, StepOutcome

log = structlog.get_logger(__name__)

STEP_TASK = "tasks.workflow.step"
MAX_INPUT_BYTES = 256 * 1024


class WorkflowInputError(ValueError):
    """A run was refused at the edge: unknown workflow or bad input; nothing was written."""


def workflows(rt: Runtime) -> Mapping[str, Workflow]:
    settings = rt.settings
    return load_workflows(settings.integrations_file, settings.workflows_file,
                          tuple(rt.registry.ids()))


def get_workflow(rt: Runtime, name: str) -> Workflow:
    known = workflows(rt)
    if name not in known:
        names = ", ".join(sorted(known)) or "none are defined"
        raise WorkflowInputError(f"There is no workflow {name!r} (known: {names}); define it "
                                 "under 'workflows:' in RECOVERY_INTEGRATIONS or "
                                 "RECOVERY_WORKFLOWS.")
    return known[name]


def _check_input(run_input: Any) -> None:
    if not isinstance(run_input, Mapping):
        raise WorkflowInputError("The workflow input must be a JSON object, got "
                                 f"{type(run_input).__name__}.")
    try:
        size = len(json.dumps(run_input, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise WorkflowInputError(f"The workflow input is not plain JSON ({exc}).") from exc
    if size > MAX_INPUT_BYTES:
        raise WorkflowInputError(f"The workflow input is {size} bytes, over the limit of "
                                 f"{MAX_INPUT_BYTES}; pass references to large data instead.")


def start_run(rt: Runtime, name: str, run_input: Any) -> str:
    """Validate, record the run and send its first steps; returns the run id."""
    workflow = get_workflow(rt, name)
    _check_input(run_input)
    run_id = store.create_run(rt.engine, workflow, dict(run_input))
    log.info("workflow_run_started", run_id=run_id, workflow=name)
    dispatch(rt, workflow, run_id, store.advance(rt.engine, workflow, run_id))
    return run_id


def start_workflow(name: str, run_input: Mapping[str, Any]) -> str:
    """The producer's entry point: start a run of workflow `name`; returns the run id.
    Raises WorkflowInputError (nothing written or sent) for an unknown workflow or bad input."""
    return start_run(get_runtime(), name, run_input)


def replay_run(rt: Runtime, run_id: str) -> None:
    """Resume a dead run from its failed steps (succeeded ones are not run again)."""
    run = store.get_run(rt.engine, run_id)
    if run is None:
        raise RunStateError(f"There is no workflow run {run_id!r}; `recovery-cli workflow "
                            "list` shows the runs.")
    workflow = get_workflow(rt, run["workflow"])
    store.reset_for_replay(rt.engine, workflow, run_id)
    log.info("workflow_run_replayed", run_id=run_id, workflow=workflow.name)
    dispatch(rt, workflow, run_id, store.advance(rt.engine, workflow, run_id))


def compensate_run(rt: Runtime, run_id: str) -> list[str]:
    """Give up on a dead run: undo its completed steps, latest first; returns what is undone."""
    run = store.get_run(rt.engine, run_id)
    if run is None:
        raise RunStateError(f"There is no workflow run {run_id!r}; `recovery-cli workflow "
                            "list` shows the runs.")
    workflow = get_workflow(rt, run["workflow"])
    steps = store.begin_compensation(rt.engine, workflow, run_id)
    log.info("workflow_run_compensating", run_id=run_id, workflow=workflow.name, undo=steps)
    dispatch(rt, workflow, run_id, store.advance(rt.engine, workflow, run_id))
    return steps


def finish_step(rt: Runtime, workflow: Workflow, run_id: str, step_id: str,
                outcome: StepOutcome) -> None:
    """Record a step's outcome, then send whatever became ready."""
    log.info("workflow_step_finished", run_id=run_id, step=step_id, status=outcome.status,
             error=outcome.error)
    dispatch(rt, workflow, run_id, store.advance(rt.engine, workflow, run_id, step_id, outcome))


def dispatch(rt: Runtime, workflow: Workflow, run_id: str, plan: Plan) -> None:
    if plan.ended is not None:
        rt.events.publish(WorkflowRunEnded(workflow.name, plan.ended))
        log.info("workflow_run_ended", run_id=run_id, workflow=workflow.name,
                 status=plan.ended)
    if not plan.dispatch:
        return
    for step_id in plan.dispatch:
        send_step(workflow, run_id, step_id)
    store.mark_dispatched(rt.engine, run_id, plan.dispatch)


def step_reprs(workflow: Workflow, run_id: str, step_id: str) -> dict[str, str]:
    """What Flower shows for a step: names and the step's type, never the input or outputs."""
    step = workflow.step(step_id)
    shown = {"run_id": run_id, "workflow": workflow.name, "step": step_id, "type": step.type}
    if step.type == "api_call":
        shown["integration"] = str(step.config.get("integration"))
    return {"argsrepr": "()", "kwargsrepr": bounded_repr(shown)}


def send_step(workflow: Workflow, run_id: str, step_id: str) -> None:
    # Imported when a step is sent, like publish_job: building a run must not load Celery.
    from recovery.celery_base import app

    app.send_task(STEP_TASK, kwargs={"run_id": run_id, "step_id": step_id},
                  **step_reprs(workflow, run_id, step_id))

