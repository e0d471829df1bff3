"""jobs.status_seq: the sequence of the write that set a job's status.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00

Audit writes are batched and, while PostgreSQL is away, spooled and replayed later, so two
writes for one job can arrive out of order. Every job write carries a sequence number; a write
applies only if its number is at least the stored one. Existing rows start at 0.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("status_seq", sa.BigInteger(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("status_seq")
