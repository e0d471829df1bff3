"""The audit trail: jobs, attempts, breaker transitions, health checks, dead letters, alerts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

Portable types only (JSON, not JSONB) so the same schema runs on SQLite. Constraint names follow
the naming convention in recovery/audit/models.py so later migrations can refer to them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = (
    "queued", "running", "retrying", "deferred", "succeeded", "degraded", "failed", "dead",
    "duplicate",
)
ATTEMPT_KINDS = ("call", "deferral", "fallback", "duplicate")
DECISIONS = ("done", "retry", "defer", "fallback", "dead_letter", "fail", "duplicate")
DEAD_LETTER_STATES = ("parked", "replayed", "quarantined", "purged")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _big_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _check(table: str, column: str, values: Sequence[str]) -> sa.CheckConstraint:
    quoted = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({quoted})", name=op.f(f"ck_{table}_{column}"))


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("integration", sa.String(128), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("deferrals", sa.Integer(), server_default="0", nullable=False),
        sa.Column("replay_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_seen_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("strategy", sa.String(64), nullable=True),
        sa.Column("fallback_used", sa.String(32), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        _check("jobs", "status", JOB_STATUSES),
    )
    op.create_index(op.f("ix_jobs_idempotency_key"), "jobs", ["idempotency_key"])
    op.create_index(op.f("ix_jobs_integration_status"), "jobs", ["integration", "status"])
    op.create_index(op.f("ix_jobs_status_updated_at"), "jobs", ["status", "updated_at"])

    op.create_table(
        "attempts",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), server_default="0", nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_categories", sa.JSON(), nullable=False),
        sa.Column("retryable", sa.Boolean(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("delay_ms", sa.Integer(), nullable=True),
        sa.Column("delay_source", sa.String(16), nullable=True),
        sa.Column("strategy", sa.String(64), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("task_id", sa.String(255), nullable=True),
        sa.Column("dedupe_key", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_attempts_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_attempts_dedupe_key")),
        _check("attempts", "kind", ATTEMPT_KINDS),
        _check("attempts", "decision", DECISIONS),
    )
    op.create_index(op.f("ix_attempts_job_id"), "attempts", ["job_id"])

    op.create_table(
        "breaker_transitions",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("integration", sa.String(128), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breaker_transitions")),
    )
    op.create_index(
        op.f("ix_breaker_transitions_integration_at"), "breaker_transitions", ["integration", "at"]
    )

    op.create_table(
        "health_checks",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("integration", sa.String(128), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_checks")),
    )
    op.create_index(
        op.f("ix_health_checks_integration_at"), "health_checks", ["integration", "at"]
    )

    op.create_table(
        "dead_letters",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("integration", sa.String(128), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("error_categories", sa.JSON(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_enqueued_at", _utc(), nullable=False),
        sa.Column("dead_at", _utc(), nullable=False),
        sa.Column("replay_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("envelope", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_dead_letters")),
        _check("dead_letters", "state", DEAD_LETTER_STATES),
    )
    op.create_index(op.f("ix_dead_letters_state_dead_at"), "dead_letters", ["state", "dead_at"])
    op.create_index(
        op.f("ix_dead_letters_integration_state"), "dead_letters", ["integration", "state"]
    )

    op.create_table(
        "alerts",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("integration", sa.String(128), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index(op.f("ix_alerts_kind_at"), "alerts", ["kind", "at"])


def downgrade() -> None:
    for table in (
        "alerts",
        "dead_letters",
        "health_checks",
        "breaker_transitions",
        "attempts",
        "jobs",
    ):
        op.drop_table(table)
