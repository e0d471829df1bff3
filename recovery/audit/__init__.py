"""The PostgreSQL (or SQLite) audit trail: models, a writer that never fails a job, queries."""

from recovery.audit.models import (
    AttemptDecision,
    AttemptKind,
    DeadLetterState,
    JobStatus,
)
from recovery.audit.queries import get_job, list_jobs, list_transitions
from recovery.audit.writer import AttemptRecord, AuditWriter, DeadLetterRecord

__all__ = [
    "AttemptDecision",
    "AttemptKind",
    "AttemptRecord",
    "AuditWriter",
    "DeadLetterRecord",
    "DeadLetterState",
    "JobStatus",
    "get_job",
    "list_jobs",
    "list_transitions",
]
