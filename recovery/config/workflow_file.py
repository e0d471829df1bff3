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

from recovery.config.workflows import (
    DEFAULT_STEP_TIMEOUT_MS,
    Workflow,
    WorkflowError,
    WorkflowStep,
    validate,
)
from recovery.config.yamlconfig import Section, read_yaml, show_value

STEP_KEYS = ("id", "name", "type", "config", "depends_on", "critical", "compensate",
             "timeout_ms")
_MISSING = "no such file; set RECOVERY_WORKFLOWS to the path of a workflows YAML file"


def _names(s: Section, key: str) -> tuple[str, ...]:
    value = s.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        s.fail(key, f"must be a list of step ids, got {show_value(value)}")
    return tuple(value)


def _step(entry: Any, path: str, workflow: str, number: int) -> WorkflowStep:
    where = f"{path}: workflow {workflow!r}: step #{number}"
    if not isinstance(entry, Mapping):
        raise WorkflowError(f"{where} must be a mapping with keys id, type and config, got "
                            f"{show_value(entry)}.")
    ident = entry.get("id")
    if not isinstance(ident, str):
        raise WorkflowError(f"{where}: key 'id' is required (a string such as 'charge').")
    s = Section(entry, path, f"workflow {workflow!r}: step {ident!r}", WorkflowError)
    s.reject_unknown(STEP_KEYS)
    config = s.get("config")
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        s.fail("config", f"must be a mapping, got {show_value(config)}")
    compensate = s.get("compensate")
    if compensate is not None and not isinstance(compensate, str):
        s.fail("compensate", f"must be a step id, got {show_value(compensate)}")
    return WorkflowStep(
        id=ident, type=s.required_text("type"), name=s.text("name", ""), config=dict(config),
        depends_on=_names(s, "depends_on"), critical=s.flag("critical", True),
        compensate=compensate, timeout_ms=s.whole("timeout_ms", DEFAULT_STEP_TIMEOUT_MS, 1,
                                                  3_600_000, "ms"))


def _workflow(entry: Any, path: str, number: int, integrations: Iterable[str] | None) -> Workflow:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise WorkflowError(f"{path}: workflow #{number} must be a mapping with a 'name' "
                            "(a string such as 'order') and a 'steps' list.")
    name = entry["name"]
    s = Section(entry, path, f"workflow {name!r}", WorkflowError)
    s.reject_unknown(("name", "steps", "on_failure"))
    steps = s.get("steps")
    if not isinstance(steps, list) or not steps:
        s.fail("steps", f"must be a non-empty list of steps, got {show_value(steps)}")
    built = tuple(_step(item, path, name, n) for n, item in enumerate(steps, 1))
    on_failure = s.text("on_failure", "compensate")
    return validate(Workflow(name, built, source=path, on_failure=on_failure), integrations)


def parse_workflows(entries: Any, path: str,
                    integrations: Iterable[str] | None) -> dict[str, Workflow]:
    """The workflows of one `workflows:` list, by name; WorkflowError on the first problem."""
    if not isinstance(entries, list):
        raise WorkflowError(f"{path}: 'workflows' must be a list of workflows, got "
                            f"{show_value(entries)}.")
    known = list(integrations) if integrations is not None else None
    found: dict[str, Workflow] = {}
    for number, entry in enumerate(entries, 1):
        workflow = _workflow(entry, path, number, known)
        if workflow.name in found:
            raise WorkflowError(f"{path}: workflow {workflow.name!r} is defined twice; give "
                                "each workflow its own name.")
        found[workflow.name] = workflow
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
