"""SQLAlchemy models of the audit trail.

Types are portable (JSON, not JSONB) because the demo runs the same schema on SQLite. All times
are stored in UTC through :class:`UTCDateTime`. The migrations in migrations/versions/ create
exactly these tables; a test compares the two. The frozen records at the end are what callers
hand to :class:`~recovery.audit.writer.AuditWriter`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DEFERRED = "deferred"
    SUCCEEDED = "succeeded"
    DEGRADED = "degraded"
    FAILED = "failed"
    DEAD = "dead"
    DUPLICATE = "duplicate"


#: Statuses after which a job does not run again (unless an operator replays it).
TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.DEGRADED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.DUPLICATE}
)


class AttemptKind(StrEnum):
    CALL = "call"
    DEFERRAL = "deferral"
    FALLBACK = "fallback"
    DUPLICATE = "duplicate"


class AttemptDecision(StrEnum):
    DONE = "done"
    RETRY = "retry"
    DEFER = "defer"
    FALLBACK = "fallback"
    DEAD_LETTER = "dead_letter"
    FAIL = "fail"
    DUPLICATE = "duplicate"


class DeadLetterState(StrEnum):
    PARKED = "parked"
    REPLAYED = "replayed"
    QUARANTINED = "quarantined"
    PURGED = "purged"


def values_check(column: str, values: type[StrEnum]) -> str:
    """SQL condition that keeps ``column`` inside an enum's values (portable CHECK)."""
    quoted = ", ".join(f"'{member.value}'" for member in values)
    return f"{column} IN ({quoted})"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC and always read back as aware UTC.

    SQLite keeps no zone, so values are converted to UTC before storage and tagged as UTC on
    the way out. Naive datetimes are taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: Autoincrementing 64-bit ids; SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class Job(Base):
    """One job as the producer submitted it and its latest state. Path and params are redacted."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(values_check("status", JobStatus), name="status"),
        Index(None, "integration", "status"),
        Index(None, "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    integration: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]]
    idempotency_key: Mapped[str | None] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    deferrals: Mapped[int] = mapped_column(Integer, server_default="0")
    replay_count: Mapped[int] = mapped_column(Integer, server_default="0")
    first_seen_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(Text)
    strategy: Mapped[str | None] = mapped_column(String(64))
    fallback_used: Mapped[str | None] = mapped_column(String(32))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: The sequence number of the write that set the status; an older write never overwrites a
    #: newer one, even when batching or the spool delivers it later (see recovery.audit.sql).
    status_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")


class Attempt(Base):
    """One step of a job: an HTTP call, a deferral, a fallback, or a detected duplicate."""

    __tablename__ = "attempts"
    __table_args__ = (
        CheckConstraint(values_check("kind", AttemptKind), name="kind"),
        CheckConstraint(values_check("decision", AttemptDecision), name="decision"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    duration_ms: Mapped[int] = mapped_column(Integer, server_default="0")
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_categories: Mapped[list[str]]
    retryable: Mapped[bool | None] = mapped_column(Boolean)
    error_message: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(String(16))
    delay_ms: Mapped[int | None] = mapped_column(Integer)
    delay_source: Mapped[str | None] = mapped_column(String(16))
    strategy: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(255))
    task_id: Mapped[str | None] = mapped_column(String(255))
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)


class BreakerTransition(Base):
    __tablename__ = "breaker_transitions"
    __table_args__ = (Index(None, "integration", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    integration: Mapped[str] = mapped_column(String(128))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class HealthCheck(Base):
    __tablename__ = "health_checks"
    __table_args__ = (Index(None, "integration", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    integration: Mapped[str] = mapped_column(String(128))
    ok: Mapped[bool] = mapped_column(Boolean)
    http_status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]


class DeadLetter(Base):
    """A job parked in the dead-letter queue. The envelope is redacted by the DLQ before writing."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        CheckConstraint(values_check("state", DeadLetterState), name="state"),
        Index(None, "state", "dead_at"),
        Index(None, "integration", "state"),
    )

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    integration: Mapped[str] = mapped_column(String(128))
    task_name: Mapped[str] = mapped_column(String(255))
    error_categories: Mapped[list[str]]
    last_status: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    first_enqueued_at: Mapped[datetime]
    dead_at: Mapped[datetime]
    replay_count: Mapped[int] = mapped_column(Integer, server_default="0")
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str | None] = mapped_column(Text)
    envelope: Mapped[dict[str, Any]]


class DeadLetterArchive(Base):
    """A DLQ entry trimmed by the cap (DLQ_MAX_ENTRIES, DLQ_MAX_AGE_DAYS), kept here instead of
    dropped. `envelope` is the redacted view; `original` is the encrypted original request
    (a Fernet token) when RECOVERY_ENCRYPTION_KEYS was set, else NULL (plaintext never lands
    here)."""

    __tablename__ = "dead_letter_archive"
    __table_args__ = (Index(None, "job_id"), Index(None, "archived_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(String(64))
    integration: Mapped[str | None] = mapped_column(String(128))
    cause: Mapped[str] = mapped_column(String(16))
    dead_at: Mapped[datetime | None]
    archived_at: Mapped[datetime]
    envelope: Mapped[dict[str, Any]]
    original: Mapped[str | None] = mapped_column(Text)


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index(None, "kind", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    integration: Mapped[str | None] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]]
    at: Mapped[datetime]


@dataclass(frozen=True)
class AttemptRecord:
    """What the writer stores as one row of ``attempts``.

    ``kind`` takes an :class:`AttemptKind` value and ``decision`` an :class:`AttemptDecision` one.
    """

    job_id: str
    number: int
    kind: str
    started_at: datetime
    duration_ms: int
    decision: str
    http_status: int | None = None
    error_categories: Sequence[str] = ()
    retryable: bool | None = None
    error_message: str | None = None
    delay_ms: int | None = None
    delay_source: str | None = None
    strategy: str | None = None
    worker: str | None = None
    task_id: str | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True)
class DeadLetterRecord:
    """One row of ``dead_letters``; ``envelope`` must already be redacted by the DLQ."""

    job_id: str
    integration: str
    task_name: str
    error_categories: Sequence[str]
    last_status: int | None
    message: str
    attempts: int
    first_enqueued_at: datetime
    envelope: Mapping[str, Any]
    replay_count: int = 0
    dead_at: datetime | None = None


from recovery.audit import workflow_models  # noqa: E402,F401  (registers the workflow tables)
