"""Workflows as a user writes them (the `workflows:` list): pydantic models.

The models check each key's type, range and choice; `recovery.config.workflows.validate` checks
the graph (dependencies, cycles, undo steps, callables, integrations, references).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from recovery.config.file_types import (
    Bool,
    Choice,
    FileModel,
    Names,
    NonEmptyList,
    NonEmptyText,
    Rule,
    Text,
    Whole,
    default,
    refuse,
)
from recovery.config.workflows import DEFAULT_STEP_TIMEOUT_MS, ON_FAILURE, STEP_TYPES
from recovery.config.yamlconfig import show_value


@dataclass(frozen=True)
class StringOf(Rule):
    """Any string; `what` says what it names, e.g. "a step id"."""

    what: str

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            refuse(f"must be {self.what}, got {show_value(value)}")
        return value


class StepModel(FileModel):
    """One step of a workflow."""

    id: str
    """Unique in the workflow: 1 to 63 lowercase letters, digits, '-' or '_'."""
    name: NonEmptyText | None = None
    """A display name (default: the id)."""
    type: Annotated[str, Choice(STEP_TYPES), Text()]
    """api_call calls an integration; the others call a Python function."""
    config: dict[str, Any] | None = None
    """api_call: integration, method, path and optional json, params, headers; the others:
    callable (a dotted name) and optional inputs. Strings may hold ${input.NAME} and
    ${steps.STEP.FIELD} references."""
    depends_on: Annotated[list[str], Names("a list of step ids")] | None = None
    """Steps that must succeed first."""
    critical: Bool | None = default(True)
    """A critical step's failure fails the workflow; another's is recorded and skipped."""
    compensate: Annotated[str, StringOf("a step id")] | None = None
    """The undo step run when the saga unwinds after this step succeeded."""
    timeout_ms: Annotated[int, Whole(1, 3_600_000, "ms")] | None = default(
        DEFAULT_STEP_TIMEOUT_MS)
    """How long the step may run."""


class WorkflowModel(FileModel):
    """A named graph of steps, started by `recovery-cli workflow run NAME`."""

    name: str
    """1 to 63 lowercase letters, digits, '-' or '_'."""
    steps: Annotated[list[StepModel], NonEmptyList("steps")]
    on_failure: Annotated[str, Choice(ON_FAILURE)] | None = default("compensate")
    """What a critical failure does: compensate (unwind the saga) or park (keep the run for a
    replay)."""


class WorkflowsFile(FileModel):
    """The file named by RECOVERY_WORKFLOWS."""

    workflows: list[WorkflowModel]
