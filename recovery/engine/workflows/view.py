"""A workflow run as every display shows it (`recovery-cli workflow show --json`, the console).

The run's input and its steps' outputs are kept for replays and may hold anything the producer
or an upstream sent; a display shows a summary of each instead, plus, for an api_call step's
response body, only the fields its integration's `audit.show_body_fields` allows.
"""

from __future__ import annotations

from typing import Any

from recovery.config.workflows import Workflow, WorkflowError
from recovery.core.redact import HIDE_ALL, policy_for, redact_body
from recovery.engine.runtime import Runtime
from recovery.engine.workflows.runs import WorkflowInputError, get_workflow


def shown_run(rt: Runtime, run: dict[str, Any]) -> dict[str, Any]:
    """`run` (as `store.get_run` returns it) with its input and step outputs redacted."""
    try:
        workflow: Workflow | None = get_workflow(rt, run["workflow"])
    except (WorkflowError, WorkflowInputError):  # removed or broken: show nothing of bodies
        workflow = None
    steps = [{**step, "output": _shown_output(workflow, step)} for step in run["steps"]]
    return {**run, "input": redact_body(run["input"]), "steps": steps}


def _shown_output(workflow: Workflow | None, step: dict[str, Any]) -> Any:
    value = step["output"]
    if step["type"] != "api_call" or not isinstance(value, dict):
        return redact_body(value)
    integration = step_integration(workflow, step["step"])
    policy = policy_for(integration) if integration else HIDE_ALL
    return {**value, "body": redact_body(value.get("body"), policy)}


def step_integration(workflow: Workflow | None, step_id: str) -> str | None:
    """The integration an api_call step of `workflow` calls; None for other steps or when the
    workflow (or the step) is no longer defined."""
    if workflow is None or step_id not in {s.id for s in workflow.steps}:
        return None
    integration = workflow.step(step_id).config.get("integration")
    return str(integration) if integration else None
