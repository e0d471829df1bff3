"""dead_letter_archive: DLQ entries trimmed by the cap, kept instead of dropped.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 00:00:00

The `dlq` Redis list is capped by count (DLQ_MAX_ENTRIES) and age (DLQ_MAX_AGE_DAYS); what the
cap trims is written here first. `envelope` is the redacted view; `original` holds the Fernet
token of the original request when encryption at rest is on, and is NULL otherwise.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letter_archive",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("integration", sa.String(128), nullable=True),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=False),
        sa.Column("original", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letter_archive")),
    )
    op.create_index(op.f("ix_dead_letter_archive_job_id"), "dead_letter_archive", ["job_id"])
    op.create_index(op.f("ix_dead_letter_archive_archived_at"), "dead_letter_archive",
                    ["archived_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_dead_letter_archive_archived_at"), table_name="dead_letter_archive")
    op.drop_index(op.f("ix_dead_letter_archive_job_id"), table_name="dead_letter_archive")
    op.drop_table("dead_letter_archive")
