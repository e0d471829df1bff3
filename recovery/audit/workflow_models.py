"""Tables of workflow runs: one `workflow_runs` row per run, one `step_runs` row per step.

They are the scheduler's state as well as its audit trail: a step's outcome is written with
the run row locked (`SELECT ... FOR UPDATE`), and the next steps are chosen in the same
transaction, so two steps finishing at once on two workers never both (or neither) start a
step that depends on them. They hold the run's input and each step's output, which a resumed
replay needs; credentials belong in the integrations' headers, never in a workflow input.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from recovery.audit.models import Base, BigId, values_check


class RunStatus(StrEnum):
    RUNNING = "running"
    FAILING = "failing"  # a critical step failed; waiting for running steps to finish
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    DEGRADED = "degraded"
    COMPENSATED = "compensated"
    DEAD = "dead"


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


#: Run statuses after which nothing runs until an operator replays (dead) the run.
FINAL_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.DEGRADED,
                                RunStatus.COMPENSATED, RunStatus.DEAD})


class WorkflowRun(Base):
    __tablename__ = "workflow_runs"
    __table_args__ = (
        CheckConstraint(values_check("status", RunStatus), name="status"),
        Index(None, "workflow", "status"),
        Index(None, "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[Any] = mapped_column(JSON)
    replay_count: Mapped[int] = mapped_column(Integer, server_default="0")
    failed_step: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class StepRun(Base):
    __tablename__ = "step_runs"
    __table_args__ = (
        CheckConstraint(values_check("status", StepStatus), name="status"),
        UniqueConstraint("run_id", "step_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("workflow_runs.id", ondelete="CASCADE"), index=True
    )
    step_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    undo: Mapped[bool] = mapped_column(Boolean, server_default="false")
    critical: Mapped[bool] = mapped_column(Boolean, server_default="true")
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    job_id: Mapped[str | None] = mapped_column(String(64))
    output: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    #: A persistence step's idempotency key while its write may have happened (see
    #: recovery.engine.workflows.execute): it is never run twice while this is set.
    claim: Mapped[str | None] = mapped_column(String(160))
    #: Set once the step's message reached the broker; a queued step without it is sent again.
    dispatched: Mapped[bool] = mapped_column(Boolean, server_default="false")
    #: Order of completion in the run, for the saga's reverse order.
    completed_seq: Mapped[int | None] = mapped_column(Integer)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
