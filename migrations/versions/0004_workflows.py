"""workflow_runs and step_runs: multi-step workflows, their state and audit trail.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_STATUSES = ("running", "failing", "compensating", "succeeded", "degraded", "compensated",
                "dead")
STEP_STATUSES = ("pending", "queued", "running", "succeeded", "failed")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _check(table: str, column: str, values: Sequence[str]) -> sa.CheckConstraint:
    quoted = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({quoted})", name=op.f(f"ck_{table}_{column}"))


def upgrade() -> None:
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("replay_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed_step", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_runs")),
        _check("workflow_runs", "status", RUN_STATUSES),
    )
    op.create_index(op.f("ix_workflow_runs_workflow_status"), "workflow_runs",
                    ["workflow", "status"])
    op.create_index(op.f("ix_workflow_runs_status_updated_at"), "workflow_runs",
                    ["status", "updated_at"])
    op.create_table(
        "step_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("undo", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("critical", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("claim", sa.String(160), nullable=True),
        sa.Column("dispatched", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("completed_seq", sa.Integer(), nullable=True),
        sa.Column("queued_at", _utc(), nullable=True),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_runs")),
        sa.ForeignKeyConstraint(["run_id"], ["workflow_runs.id"], ondelete="CASCADE",
                                name=op.f("fk_step_runs_run_id_workflow_runs")),
        sa.UniqueConstraint("run_id", "step_id", name=op.f("uq_step_runs_run_id_step_id")),
        _check("step_runs", "status", STEP_STATUSES),
    )
    op.create_index(op.f("ix_step_runs_run_id"), "step_runs", ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_step_runs_run_id"), table_name="step_runs")
    op.drop_table("step_runs")
    op.drop_index(op.f("ix_workflow_runs_status_updated_at"), table_name="workflow_runs")
    op.drop_index(op.f("ix_workflow_runs_workflow_status"), table_name="workflow_runs")
    op.drop_table("workflow_runs")
