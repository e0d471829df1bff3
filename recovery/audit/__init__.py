"""The PostgreSQL (or SQLite) audit trail: models, a writer that never fails a job, queries.

The names below load their module on first use: a producer imports `recovery.audit.ops` and
`recovery.audit.stream` to spool its "queued" row, and must not load SQLAlchemy for it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recovery.audit.models import AttemptDecision, AttemptKind, DeadLetterState, JobStatus
    from recovery.audit.queries import get_job, list_jobs, list_transitions
    from recovery.audit.writer import AttemptRecord, AuditWriter, DeadLetterRecord

_HOMES = {
    "AttemptDecision": "recovery.audit.models",
    "AttemptKind": "recovery.audit.models",
    "DeadLetterState": "recovery.audit.models",
    "JobStatus": "recovery.audit.models",
    "get_job": "recovery.audit.queries",
    "list_jobs": "recovery.audit.queries",
    "list_transitions": "recovery.audit.queries",
    "AttemptRecord": "recovery.audit.writer",
    "AuditWriter": "recovery.audit.writer",
    "DeadLetterRecord": "recovery.audit.writer",
}

__all__ = ["AttemptDecision", "AttemptKind", "AttemptRecord", "AuditWriter", "DeadLetterRecord",
           "DeadLetterState", "JobStatus", "get_job", "list_jobs", "list_transitions"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'recovery.audit' has no attribute {name!r}")
    return getattr(import_module(home), name)
