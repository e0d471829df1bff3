"""What a run does next, decided from its step rows (called with the run row locked).

    running:      a forward step whose dependencies are all done is queued (done: succeeded,
                  or failed while not critical: its dependents still run, and one that
                  references its output fails with a sentence); the run ends `degraded` when a
                  non-critical step failed; a critical failure turns the run `failing`.
    failing:      nothing new starts; once no step is queued or running, the run is parked
                  `dead` (replayable) when the workflow says `on_failure: park`; otherwise the
                  undo steps of the completed steps run, one at a time, latest completed
                  first (`compensating`), or, with nothing to undo, the run is `dead`.
    compensating: the next undo step, until none is left: `compensated`.

The functions change the ORM rows in place and return the step ids to dispatch; the caller
commits, then publishes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from recovery.audit.workflow_models import RunStatus, StepRun, StepStatus, WorkflowRun
from recovery.config.workflows import Workflow

ACTIVE = (StepStatus.QUEUED, StepStatus.RUNNING)


@dataclass(frozen=True)
class Plan:
    dispatch: tuple[str, ...]
    ended: str | None  # the run's final status when this decision ended it


def _now() -> datetime:
    return datetime.now(UTC)


def decide(workflow: Workflow, run: WorkflowRun, rows: Sequence[StepRun]) -> Plan:
    by_id = {row.step_id: row for row in rows}
    if run.status == RunStatus.RUNNING:
        _note_failures(workflow, run, by_id)
    if run.status == RunStatus.RUNNING:
        return _forward(workflow, run, by_id)
    if run.status == RunStatus.FAILING:
        if any(row.status in ACTIVE for row in rows if not row.undo):
            return Plan((), None)
        if workflow.on_failure == "park":
            return _end(run, RunStatus.DEAD)
        run.status = RunStatus.COMPENSATING
    if run.status == RunStatus.COMPENSATING:
        return _compensate(workflow, run, by_id)
    return Plan((), None)


def _note_failures(workflow: Workflow, run: WorkflowRun, by_id: dict[str, StepRun]) -> None:
    for step in workflow.forward_steps:
        row = by_id[step.id]
        if row.status != StepStatus.FAILED:
            continue
        if row.critical:
            run.status = RunStatus.FAILING
            run.failed_step, run.error = step.id, row.error
            return


def _done(row: StepRun) -> bool:
    return row.status == StepStatus.SUCCEEDED or (row.status == StepStatus.FAILED
                                                   and not row.critical)


def _queue(row: StepRun) -> str:
    row.status = StepStatus.QUEUED
    row.dispatched = False
    row.queued_at = _now()
    return row.step_id


def _forward(workflow: Workflow, run: WorkflowRun, by_id: dict[str, StepRun]) -> Plan:
    ready = [_queue(by_id[step.id]) for step in workflow.forward_steps
             if by_id[step.id].status == StepStatus.PENDING
             and all(_done(by_id[dep]) for dep in step.depends_on)]
    forward = [by_id[step.id] for step in workflow.forward_steps]
    if any(row.status in (StepStatus.PENDING, *ACTIVE) for row in forward):
        return Plan(tuple(ready), None)
    troubled = [row.step_id for row in forward if row.status != StepStatus.SUCCEEDED]
    if troubled:
        run.error = f"Non-critical steps did not succeed: {', '.join(troubled)}."
    return _end(run, RunStatus.DEGRADED if troubled else RunStatus.SUCCEEDED)


def _compensate(workflow: Workflow, run: WorkflowRun, by_id: dict[str, StepRun]) -> Plan:
    undo_rows = [by_id[s.compensate] for s in workflow.forward_steps if s.compensate]
    if any(row.status in ACTIVE for row in undo_rows):
        return Plan((), None)
    done = sorted((by_id[s.id] for s in workflow.forward_steps
                   if s.compensate and by_id[s.id].status == StepStatus.SUCCEEDED),
                  key=lambda row: row.completed_seq or 0, reverse=True)
    for row in done:
        undo = by_id[workflow.step(row.step_id).compensate or ""]
        if undo.status == StepStatus.PENDING:
            return Plan((_queue(undo),), None)
    if not any(row.status != StepStatus.PENDING for row in undo_rows):
        return _end(run, RunStatus.DEAD)  # nothing was undone: the run can be replayed
    failed = [row.step_id for row in undo_rows if row.status == StepStatus.FAILED]
    if failed:
        run.error = f"{run.error or ''} Undo steps that failed: {', '.join(failed)}.".strip()
    return _end(run, RunStatus.COMPENSATED)


def undoable(workflow: Workflow, rows: Sequence[StepRun]) -> list[str]:
    """Completed forward steps whose undo step has not run: what a compensation would undo."""
    by_id = {row.step_id: row for row in rows}
    return [s.id for s in workflow.forward_steps if s.compensate
            and by_id[s.id].status == StepStatus.SUCCEEDED
            and by_id[s.compensate].status == StepStatus.PENDING]


def _end(run: WorkflowRun, status: RunStatus) -> Plan:
    run.status = status
    run.finished_at = _now()
    return Plan((), status.value)
