"""Workflows: named DAGs of steps, their validation, and a small Python builder.

A workflow is checked once, when it is loaded (from YAML by `recovery.config.workflow_file` or
built in Python with `WorkflowBuilder`): step ids unique, known types, dependencies that exist
and form no cycle, callables that import, integrations that exist, `${...}` references that
name the input or a step the referencing step depends on (directly or through others), and
undo steps that exist and are not part of the forward graph. Every refusal is a
`WorkflowError` sentence naming the source, the workflow, the step and the key.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

STEP_TYPES = ("api_call", "validation", "transformation", "persistence")
#: What a critical failure does: unwind the saga at once, or park the run (dead, replayable;
#: an operator may still `workflow compensate` it).
ON_FAILURE = ("compensate", "park")
DEFAULT_STEP_TIMEOUT_MS = 30_000
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
REFERENCE = re.compile(r"\$\{([^}]*)\}")
_REF_BODY = re.compile(r"(input|steps)((?:\.[A-Za-z0-9_-]+)*)")


class WorkflowError(ValueError):
    """A workflow definition is invalid; nothing of it was loaded."""


@dataclass(frozen=True)
class WorkflowStep:
    """One step. `config` holds what the type needs: for `api_call` the integration, method,
    path and optional json/params/headers; for the callable types `callable` (a dotted name)
    and optional `inputs`. Strings anywhere in it may carry `${...}` references."""

    id: str
    type: str
    name: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    critical: bool = True
    compensate: str | None = None
    timeout_ms: int = DEFAULT_STEP_TIMEOUT_MS

    @property
    def label(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class Workflow:
    name: str
    steps: tuple[WorkflowStep, ...]
    source: str = "python"
    on_failure: str = "compensate"

    def step(self, step_id: str) -> WorkflowStep:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    @property
    def undo_steps(self) -> frozenset[str]:
        """Steps that only run as another step's compensation, never forward."""
        return frozenset(s.compensate for s in self.steps if s.compensate)

    @property
    def forward_steps(self) -> tuple[WorkflowStep, ...]:
        undo = self.undo_steps
        return tuple(s for s in self.steps if s.id not in undo)


def references(value: Any) -> Iterator[str]:
    """Every `${...}` expression inside `value` (strings in nested mappings and lists)."""
    if isinstance(value, str):
        yield from (match.group(1).strip() for match in REFERENCE.finditer(value))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from references(item)


def parse_reference(expression: str) -> tuple[str, list[str]]:
    """('input', path) or ('steps', [step id, *path]); ValueError for anything else."""
    match = _REF_BODY.fullmatch(expression)
    if match is None:
        raise ValueError(expression)
    parts = [part for part in match.group(2).split(".") if part]
    if match.group(1) == "steps" and not parts:
        raise ValueError(expression)
    return match.group(1), parts


def import_callable(dotted: str) -> Callable[..., Any]:
    """`package.module:function` or `package.module.function`; ImportError if it is not one."""
    module_name, _, attr = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{dotted!r} is not a dotted name such as 'package.module.function'")
    module = importlib.import_module(module_name)
    target = getattr(module, attr, None)
    if not callable(target):
        raise ImportError(f"module {module_name!r} has no callable {attr!r}")
    return target


class _Checker:
    """Validation of one workflow; `fail` raises with the source, workflow and step named."""

    def __init__(self, workflow: Workflow, integrations: Iterable[str] | None) -> None:
        self.wf = workflow
        self.integrations = None if integrations is None else set(integrations)
        self.ids = {step.id for step in workflow.steps}

    def fail(self, step: WorkflowStep | None, key: str, problem: str) -> NoReturn:
        where = f"{self.wf.source}: workflow {self.wf.name!r}"
        if step is not None:
            where += f": step {step.id!r}"
        raise WorkflowError(f"{where}: key {key!r} {problem}.")

    def run(self) -> None:
        if not ID_PATTERN.fullmatch(self.wf.name):
            raise WorkflowError(f"{self.wf.source}: workflow name {self.wf.name!r} must be 1 to "
                                "63 lowercase letters, digits, '-' or '_'.")
        if not self.wf.forward_steps:
            self.fail(None, "steps", "must list at least one step that is not an undo step")
        if self.wf.on_failure not in ON_FAILURE:
            self.fail(None, "on_failure", f"must be one of {', '.join(ON_FAILURE)}, got "
                      f"{self.wf.on_failure!r}")
        seen: set[str] = set()
        for step in self.wf.steps:
            if not ID_PATTERN.fullmatch(step.id):
                self.fail(step, "id", "must be 1 to 63 lowercase letters, digits, '-' or '_'")
            if step.id in seen:
                self.fail(step, "id", "is used by two steps; give each step its own id")
            seen.add(step.id)
        for step in self.wf.steps:
            self.check_step(step)
        self.check_cycles()
        for step in self.wf.steps:
            self.check_references(step)

    def check_step(self, step: WorkflowStep) -> None:
        if step.type not in STEP_TYPES:
            self.fail(step, "type", f"must be one of {', '.join(STEP_TYPES)}, got {step.type!r}")
        for dep in step.depends_on:
            if dep not in self.ids:
                self.fail(step, "depends_on", f"names an unknown step {dep!r} (steps: "
                          f"{', '.join(sorted(self.ids))})")
            if dep in self.wf.undo_steps:
                self.fail(step, "depends_on", f"names {dep!r}, an undo step, which only runs "
                          "as a compensation")
        if step.compensate is not None:
            self.check_compensate(step)
        if step.id in self.wf.undo_steps and step.depends_on:
            self.fail(step, "depends_on", "must be empty on an undo step (it runs when the "
                      "saga unwinds, after the step it undoes)")
        if not 1 <= step.timeout_ms <= 3_600_000:
            self.fail(step, "timeout_ms", f"must be from 1 to 3600000, got {step.timeout_ms}")
        if step.type == "api_call":
            self.check_api_call(step)
        else:
            self.check_callable(step)

    def check_compensate(self, step: WorkflowStep) -> None:
        target = step.compensate
        if target not in self.ids:
            self.fail(step, "compensate", f"names an unknown step {target!r}")
        if target == step.id:
            self.fail(step, "compensate", "names the step itself")
        if step.id in self.wf.undo_steps:
            self.fail(step, "compensate", "is set on an undo step; an undo is not undone")
        users = [s.id for s in self.wf.steps if s.compensate == target]
        if len(users) > 1:
            self.fail(step, "compensate", f"names {target!r}, which also undoes {users[0]!r}; "
                      "give each step its own undo step")

    def check_api_call(self, step: WorkflowStep) -> None:
        known = {"integration", "method", "path", "json", "params", "headers"}
        self.check_keys(step, known)
        for key in ("integration", "method", "path"):
            if not isinstance(step.config.get(key), str) or not step.config[key]:
                self.fail(step, f"config.{key}", "is required for an api_call step (a string)")
        integration = step.config["integration"]
        if self.integrations is not None and integration not in self.integrations:
            self.fail(step, "config.integration", f"names an unknown integration "
                      f"{integration!r} (known: {', '.join(sorted(self.integrations))})")
        for key in ("params", "headers"):
            if step.config.get(key) is not None and not isinstance(step.config[key], Mapping):
                self.fail(step, f"config.{key}", "must be a mapping")

    def check_callable(self, step: WorkflowStep) -> None:
        self.check_keys(step, {"callable", "inputs"})
        dotted = step.config.get("callable")
        if not isinstance(dotted, str) or not dotted:
            self.fail(step, "config.callable", f"is required for a {step.type} step: the "
                      "dotted name of a Python function such as 'shop.checks.validate_order'")
        try:
            import_callable(dotted)
        except ImportError as exc:
            self.fail(step, "config.callable", f"cannot be imported ({exc}); install the "
                      "module or fix the name")

    def check_keys(self, step: WorkflowStep, known: set[str]) -> None:
        for key in step.config:
            if key not in known:
                self.fail(step, f"config.{key}", f"is not a key of a {step.type} step "
                          f"(known keys: {', '.join(sorted(known))})")

    def check_cycles(self) -> None:
        deps = {s.id: s.depends_on for s in self.wf.steps}
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(node: str, path: list[str]) -> None:
            if state.get(node) == 2:
                return
            if state.get(node) == 1:
                cycle = " -> ".join([*path[path.index(node):], node])
                self.fail(self.wf.step(node), "depends_on", f"forms a cycle ({cycle}); a "
                          "workflow must be a directed acyclic graph")
            state[node] = 1
            for dep in deps[node]:
                visit(dep, [*path, node])
            state[node] = 2

        for step in self.wf.steps:
            visit(step.id, [])

    def check_references(self, step: WorkflowStep) -> None:
        allowed = ancestors(self.wf, step.id)
        if step.id in self.wf.undo_steps:
            undone = next(s.id for s in self.wf.steps if s.compensate == step.id)
            allowed |= {undone} | ancestors(self.wf, undone)
        for key, value in step.config.items():
            for expression in references(value):
                self.check_reference(step, f"config.{key}", expression, allowed)

    def check_reference(self, step: WorkflowStep, key: str, expression: str,
                        allowed: set[str]) -> None:
        try:
            root, parts = parse_reference(expression)
        except ValueError:
            self.fail(step, key, f"has a bad reference '${{{expression}}}'; write "
                      "${input.NAME} or ${steps.STEP.FIELD}")
        if root == "steps" and parts[0] not in allowed:
            why = ("is not a step" if parts[0] not in self.ids else
                   "is not a step this one depends on, so its output may not exist yet")
            self.fail(step, key, f"references '${{{expression}}}' but {parts[0]!r} {why}; "
                      "add it to depends_on or fix the name")


def ancestors(workflow: Workflow, step_id: str) -> set[str]:
    """Every step `step_id` depends on, directly or through others."""
    found: set[str] = set()
    todo = list(workflow.step(step_id).depends_on)
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(workflow.step(current).depends_on)
    return found


def validate(workflow: Workflow, integrations: Iterable[str] | None = None) -> Workflow:
    """`workflow` if it is valid (integration ids checked when given), else WorkflowError."""
    _Checker(workflow, integrations).run()
    return workflow


class WorkflowBuilder:
    """Build a workflow in Python:

        wf = (WorkflowBuilder("order")
              .validation("validate", "shop.checks.order", inputs={"order": "${input}"})
              .api_call("charge", "payments", "POST", "/charges", depends_on=["validate"],
                        json={"amount": "${input.amount}"}, compensate="refund")
              .api_call("refund", "payments", "POST", "/refunds",
                        json={"charge": "${steps.charge.body.id}"})
              .build(integrations=registry.ids()))
    """

    def __init__(self, name: str, on_failure: str = "compensate") -> None:
        self.name, self.on_failure = name, on_failure
        self._steps: list[WorkflowStep] = []

    def step(self, step_id: str, step_type: str, config: Mapping[str, Any], *,
             depends_on: Iterable[str] = (), critical: bool = True, compensate: str | None = None,
             timeout_ms: int = DEFAULT_STEP_TIMEOUT_MS, name: str = "") -> WorkflowBuilder:
        self._steps.append(WorkflowStep(step_id, step_type, name, dict(config),
                                        tuple(depends_on), critical, compensate, timeout_ms))
        return self

    def api_call(self, step_id: str, integration: str, method: str, path: str,
                 **options: Any) -> WorkflowBuilder:
        config = {"integration": integration, "method": method, "path": path}
        for key in ("json", "params", "headers"):
            if key in options:
                config[key] = options.pop(key)
        return self.step(step_id, "api_call", config, **options)

    def _callable(self, kind: str, step_id: str, dotted: str, inputs: Any,
                  options: dict[str, Any]) -> WorkflowBuilder:
        config: dict[str, Any] = {"callable": dotted}
        if inputs is not None:
            config["inputs"] = inputs
        return self.step(step_id, kind, config, **options)

    def validation(self, step_id: str, dotted: str, inputs: Any = None,
                   **options: Any) -> WorkflowBuilder:
        return self._callable("validation", step_id, dotted, inputs, options)

    def transformation(self, step_id: str, dotted: str, inputs: Any = None,
                       **options: Any) -> WorkflowBuilder:
        return self._callable("transformation", step_id, dotted, inputs, options)

    def persistence(self, step_id: str, dotted: str, inputs: Any = None,
                    **options: Any) -> WorkflowBuilder:
        return self._callable("persistence", step_id, dotted, inputs, options)

    def build(self, integrations: Iterable[str] | None = None) -> Workflow:
        workflow = Workflow(self.name, tuple(self._steps), on_failure=self.on_failure)
        return validate(workflow, integrations)
