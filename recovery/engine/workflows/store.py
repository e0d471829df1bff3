"""Workflow runs in PostgreSQL: create, claim a step, record an outcome and plan, replay, read.

Every change to a run's steps happens in one transaction that holds the run row
(`SELECT ... FOR UPDATE`), so steps finishing at once on different workers are recorded one
after the other and each sees the other's outcome when it plans what comes next.

A run's input and its steps' outputs are kept because a replay resumes from them; with
RECOVERY_ENCRYPTION_KEYS set they are stored as Fernet tokens (`{"__sealed__": token}`), like
the DLQ's originals, so the upstream's answers and the producer's input are not readable in
PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Select, func, select, update
from sqlalchemy.orm import Session

from recovery.audit.workflow_models import (
    FINAL_RUN_STATUSES,
    RunStatus,
    StepRun,
    StepStatus,
    WorkflowRun,
)
from recovery.config.workflows import Workflow
from recovery.core.crypto import UndecryptableError, current_cipher
from recovery.engine.workflows.plan import Plan, decide, undoable

SEALED = "__sealed__"
SHOWN_SEALED = "[sealed: no configured key opens it]"


class RunStateError(ValueError):
    """The run does not exist or is not in a state that allows what was asked."""


def _kept(value: Any) -> Any:
    """What is stored for an input or output: a Fernet token when encryption is on."""
    cipher = current_cipher()
    if cipher is None or value is None:
        return value
    return {SEALED: cipher.seal_json(value)}


def _opened(value: Any) -> Any:
    """The stored input or output as given; RunStateError when no configured key opens it."""
    if not (isinstance(value, dict) and set(value) == {SEALED}):
        return value
    cipher = current_cipher()
    try:
        if cipher is None:
            raise UndecryptableError("encryption is off")
        return cipher.open_json(value[SEALED])
    except UndecryptableError as exc:
        raise RunStateError("A workflow run's stored input or output is encrypted and no key in "
                            "RECOVERY_ENCRYPTION_KEYS opens it; configure the key it was "
                            "written with.") from exc


def _shown(value: Any) -> Any:
    try:
        return _opened(value)
    except RunStateError:
        return SHOWN_SEALED


@dataclass(frozen=True)
class StepOutcome:
    status: str  # succeeded | failed
    output: Any = None
    error: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class StepStart:
    """What a step needs to run: the run's input, finished steps' outputs, its own row."""

    workflow: str
    input: Any
    outputs: Mapping[str, Any]
    job_id: str | None
    claim: str | None
    replay_count: int


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _locked(engine: Engine, run_id: str) -> Iterator[tuple[Session, WorkflowRun]]:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        run = session.scalars(select(WorkflowRun).where(WorkflowRun.id == run_id)
                              .with_for_update()).one_or_none()
        if run is None:
            raise RunStateError(f"There is no workflow run {run_id!r}; `recovery-cli workflow "
                                "list` shows the runs.")
        yield session, run


def _rows(session: Session, run_id: str) -> list[StepRun]:
    return list(session.scalars(select(StepRun).where(StepRun.run_id == run_id)
                                .order_by(StepRun.id)))


def create_run(engine: Engine, workflow: Workflow, run_input: Any) -> str:
    run_id = str(uuid.uuid4())
    now = _now()
    undo = workflow.undo_steps
    with Session(engine) as session, session.begin():
        session.add(WorkflowRun(id=run_id, workflow=workflow.name, status=RunStatus.RUNNING,
                                input=_kept(run_input), replay_count=0, created_at=now,
                                updated_at=now))
        session.flush()
        for step in workflow.steps:
            session.add(StepRun(run_id=run_id, step_id=step.id, type=step.type,
                                undo=step.id in undo, critical=step.critical,
                                status=StepStatus.PENDING, attempts=0, dispatched=False))
    return run_id


def advance(engine: Engine, workflow: Workflow, run_id: str, step_id: str | None = None,
            outcome: StepOutcome | None = None, *, resend: bool = False) -> Plan:
    """Record `outcome` of `step_id` (if given) and plan. `resend`: also list queued steps
    whose message may not have reached the broker (`dispatched` unset), to send them again;
    only for a redelivered message of a finished step (its worker died before sending), never
    on the way (another worker may be about to mark its sends)."""
    with _locked(engine, run_id) as (session, run):
        rows = _rows(session, run_id)
        if step_id is not None and outcome is not None:
            _record(session, run_id, rows, step_id, outcome)
        plan = decide(workflow, run, rows)
        run.updated_at = _now()
        lost = tuple(row.step_id for row in rows if resend and row.status == StepStatus.QUEUED
                     and not row.dispatched and row.step_id not in plan.dispatch)
    return Plan(plan.dispatch + lost, plan.ended)


def _record(session: Session, run_id: str, rows: list[StepRun], step_id: str,
            outcome: StepOutcome) -> None:
    row = next(r for r in rows if r.step_id == step_id)
    if row.status not in (StepStatus.QUEUED, StepStatus.RUNNING):
        return  # a redelivered step whose outcome is already recorded
    row.status = outcome.status
    row.output, row.error = _kept(outcome.output), outcome.error
    row.attempts = max(row.attempts, outcome.attempts)
    row.finished_at = _now()
    if outcome.status == StepStatus.SUCCEEDED:
        top = session.scalar(select(func.max(StepRun.completed_seq))
                             .where(StepRun.run_id == run_id))
        row.completed_seq = (top or 0) + 1


def mark_dispatched(engine: Engine, run_id: str, step_ids: tuple[str, ...]) -> None:
    with Session(engine) as session, session.begin():
        session.execute(update(StepRun).where(StepRun.run_id == run_id,
                                              StepRun.step_id.in_(step_ids),
                                              StepRun.status == StepStatus.QUEUED)
                        .values(dispatched=True))


def start_step(engine: Engine, run_id: str, step_id: str) -> StepStart | None:
    """Mark the step running; None when there is nothing to run (already finished, or the run
    ended or is no longer running steps of this kind): a stale or duplicate message."""
    with _locked(engine, run_id) as (session, run):
        if run.status in FINAL_RUN_STATUSES:
            return None
        rows = _rows(session, run_id)
        row = next((r for r in rows if r.step_id == step_id), None)
        if row is None or row.status not in (StepStatus.QUEUED, StepStatus.RUNNING):
            return None
        if row.status == StepStatus.QUEUED:
            row.status, row.started_at, row.dispatched = StepStatus.RUNNING, _now(), True
        outputs = {r.step_id: _opened(r.output) for r in rows
                   if r.status == StepStatus.SUCCEEDED}
        return StepStart(run.workflow, _opened(run.input), outputs, row.job_id, row.claim,
                         run.replay_count)


def set_step_fields(engine: Engine, run_id: str, step_id: str, **values: Any) -> None:
    with Session(engine) as session, session.begin():
        session.execute(update(StepRun).where(StepRun.run_id == run_id,
                                              StepRun.step_id == step_id).values(**values))


def take_claim(engine: Engine, run_id: str, step_id: str, key: str) -> bool:
    """Claim a persistence step's write; False if a claim is already held (it may have run)."""
    with Session(engine) as session, session.begin():
        result = session.execute(update(StepRun).where(
            StepRun.run_id == run_id, StepRun.step_id == step_id, StepRun.claim.is_(None))
            .values(claim=key))
        return bool(result.rowcount)  # type: ignore[attr-defined]


def reset_for_replay(engine: Engine, workflow: Workflow, run_id: str) -> None:
    """A dead run runs again from its failed steps; succeeded steps keep their outputs."""
    with _locked(engine, run_id) as (session, run):
        if run.status != RunStatus.DEAD:
            raise RunStateError(f"Workflow run {run_id} is {run.status}; only a dead run can be "
                                "replayed (a compensated run was undone: start a new run).")
        for row in _rows(session, run_id):
            if row.status == StepStatus.FAILED and not row.undo:
                row.status, row.error, row.output = StepStatus.PENDING, None, None
                row.started_at = row.finished_at = row.queued_at = None
                row.job_id = None
        run.status, run.error, run.failed_step = RunStatus.RUNNING, None, None
        run.finished_at, run.updated_at = None, _now()
        run.replay_count += 1


def begin_compensation(engine: Engine, workflow: Workflow, run_id: str) -> list[str]:
    """A dead run gives up: its completed steps are undone (returns the steps to undo)."""
    with _locked(engine, run_id) as (session, run):
        if run.status != RunStatus.DEAD:
            raise RunStateError(f"Workflow run {run_id} is {run.status}; only a dead run can be "
                                "compensated.")
        steps = undoable(workflow, _rows(session, run_id))
        if not steps:
            raise RunStateError(f"Workflow run {run_id} has no completed step with an undo "
                                "step; there is nothing to compensate.")
        run.status, run.finished_at, run.updated_at = RunStatus.COMPENSATING, None, _now()
        return steps


def get_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    with Session(engine) as session:
        run = session.get(WorkflowRun, run_id)
        if run is None:
            return None
        steps = [_step_view(row) for row in _rows(session, run_id)]
        return {**_run_view(run), "input": _shown(run.input), "steps": steps}


@dataclass(frozen=True)
class RunFilter:
    """Which runs a listing shows: by status, workflow and creation time (UTC, inclusive)."""

    status: str | None = None
    workflow: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        for column, value in ((WorkflowRun.status, self.status),
                              (WorkflowRun.workflow, self.workflow)):
            if value:
                query = query.where(column == value)
        if self.since is not None:
            query = query.where(WorkflowRun.created_at >= self.since)
        if self.until is not None:
            query = query.where(WorkflowRun.created_at <= self.until)
        return query


def list_runs(engine: Engine, matching: RunFilter = RunFilter(), *, limit: int = 50,
              offset: int = 0) -> list[dict[str, Any]]:
    """Matching runs, newest first."""
    query = matching.apply(select(WorkflowRun)).order_by(WorkflowRun.created_at.desc(),
                                                         WorkflowRun.id.desc())
    with Session(engine) as session:
        return [_run_view(run) for run in session.scalars(query.limit(limit).offset(offset))]


def count_runs(engine: Engine, matching: RunFilter) -> int:
    with Session(engine) as session:
        return int(session.scalar(matching.apply(select(func.count())
                                                 .select_from(WorkflowRun))) or 0)


def find_step(engine: Engine, run_id: str, step_id: str) -> dict[str, Any] | None:
    """The run's workflow and the step's current job id, without opening any input or output;
    None when the run or the step does not exist."""
    query = (select(WorkflowRun.workflow, StepRun.job_id)
             .join(StepRun, StepRun.run_id == WorkflowRun.id)
             .where(WorkflowRun.id == run_id, StepRun.step_id == step_id))
    with Session(engine) as session:
        row = session.execute(query).one_or_none()
    if row is None:
        return None
    return {"run_id": run_id, "step": step_id, "workflow": row.workflow, "job_id": row.job_id}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _run_view(run: WorkflowRun) -> dict[str, Any]:
    return {"id": run.id, "workflow": run.workflow, "status": run.status,
            "replay_count": run.replay_count, "failed_step": run.failed_step, "error": run.error,
            "created_at": _iso(run.created_at), "updated_at": _iso(run.updated_at),
            "finished_at": _iso(run.finished_at)}


def _step_view(row: StepRun) -> dict[str, Any]:
    duration = None
    if row.started_at and row.finished_at:
        duration = int((row.finished_at - row.started_at).total_seconds() * 1000)
    return {"step": row.step_id, "type": row.type, "undo": row.undo, "critical": row.critical,
            "status": row.status, "attempts": row.attempts, "job_id": row.job_id,
            "error": row.error, "output": _shown(row.output), "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at), "duration_ms": duration}
