"""Loading workflows from YAML: the `workflows:` section of the RECOVERY_INTEGRATIONS file,
and the file named by RECOVERY_WORKFLOWS (a mapping with one `workflows:` list).

    workflows:
      - name: order
        steps:
          - {id: validate, type: validation, config: {callable: shop.checks.order,
                                                      inputs: "${input}"}}
          - id: charge
            type: api_call
            depends_on: [validate]
            compensate: refund
            config: {integration: payments, method: POST, path: /charges,
                     json: {amount: "${input.amount}"}}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from recovery.config.file_errors import first_problem
from recovery.config.workflow_models import StepModel, WorkflowModel, WorkflowsFile
from recovery.config.workflows import (
    DEFAULT_STEP_TIMEOUT_MS,
    Workflow,
    WorkflowError,
    WorkflowStep,
    validate,
)
from recovery.config.yamlconfig import read_yaml, show_value

_MISSING = "no such file; set RECOVERY_WORKFLOWS to the path of a workflows YAML file"


def _step(m: StepModel) -> WorkflowStep:
    return WorkflowStep(
        id=m.id, type=m.type, name=m.name or "", config=dict(m.config or {}),
        depends_on=tuple(m.depends_on or ()), critical=True if m.critical is None else m.critical,
        compensate=m.compensate,
        timeout_ms=DEFAULT_STEP_TIMEOUT_MS if m.timeout_ms is None else m.timeout_ms)


def _workflow(m: WorkflowModel, path: str, integrations: Iterable[str] | None) -> Workflow:
    workflow = Workflow(m.name, tuple(_step(step) for step in m.steps), source=path,
                        on_failure=m.on_failure or "compensate")
    return validate(workflow, integrations)


def _refusal(error: ValidationError, entries: list[Any], path: str) -> WorkflowError:
    """The first problem the models found, as a sentence naming file, workflow, step and key."""
    problem = first_problem(error, {"workflows": entries})
    place, number = problem.place, int(problem.place[1])
    name = entries[number].get("name") if isinstance(entries[number], Mapping) else None
    if len(place) == 2 or place[2:] == ("name",) or not isinstance(name, str):
        return WorkflowError(f"{path}: workflow #{number + 1} must be a mapping with a 'name' "
                             "(a string such as 'order') and a 'steps' list.")
    where = f"{path}: workflow {name!r}"
    if place[2] != "steps" or len(place) == 3:
        return WorkflowError(f"{where}: {problem.tail(2)}.")
    step_number = int(place[3])
    step = entries[number]["steps"][step_number]
    if len(place) == 4:
        return WorkflowError(f"{where}: step #{step_number + 1} must be a mapping with keys id, "
                             f"type and config, got {show_value(step)}.")
    if place[4:] == ("id",) or not isinstance(step.get("id"), str):
        return WorkflowError(f"{where}: step #{step_number + 1}: key 'id' is required (a "
                             "string such as 'charge').")
    return WorkflowError(f"{where}: step {step['id']!r}: {problem.tail(4)}.")


def parse_workflows(entries: Any, path: str,
                    integrations: Iterable[str] | None) -> dict[str, Workflow]:
    """The workflows of one `workflows:` list, by name; WorkflowError on the first problem."""
    if not isinstance(entries, list):
        raise WorkflowError(f"{path}: 'workflows' must be a list of workflows, got "
                            f"{show_value(entries)}.")
    try:
        models = WorkflowsFile.model_validate({"workflows": entries}).workflows
    except ValidationError as exc:
        raise _refusal(exc, entries, path) from None
    known = list(integrations) if integrations is not None else None
    found: dict[str, Workflow] = {}
    for model in models:
        if model.name in found:
            raise WorkflowError(f"{path}: workflow {model.name!r} is defined twice; give "
                                "each workflow its own name.")
        found[model.name] = _workflow(model, path, known)
    return found


def load_file(path: str, integrations: Iterable[str] | None,
              required: bool = True) -> dict[str, Workflow]:
    """The workflows of the YAML file at `path`. `required`: the file must have a
    `workflows:` list (RECOVERY_WORKFLOWS); else a missing section means none (integrations)."""
    document = read_yaml(path, WorkflowError, _MISSING)
    if not isinstance(document, Mapping) or (required and "workflows" not in document):
        raise WorkflowError(f"{path}: the top level must be a mapping with a 'workflows' list, "
                            f"got {show_value(document)}.")
    if required:
        extra = sorted(str(key) for key in document if key != "workflows")
        if extra:
            raise WorkflowError(f"{path}: unknown top-level key {extra[0]!r} (known keys: "
                                "workflows).")
    if "workflows" not in document:
        return {}
    return parse_workflows(document["workflows"], path, integrations)


@lru_cache(maxsize=4)
def load_workflows(integrations_file: str | None, workflows_file: str | None,
                   integrations: tuple[str, ...]) -> Mapping[str, Workflow]:
    """Every workflow of both sources; a name defined in both is refused."""
    found = dict(load_file(integrations_file, integrations, required=False)
                 if integrations_file else {})
    if workflows_file:
        for name, workflow in load_file(workflows_file, integrations).items():
            if name in found:
                raise WorkflowError(f"{workflows_file}: workflow {name!r} is also defined in "
                                    f"{integrations_file}; define it once.")
            found[name] = workflow
    return found
