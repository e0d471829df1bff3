"""Batched audit writes for the DLQ: a whole batch in one transaction, never raising.

`AuditWriter` writes one row per transaction, which caps a replay at a few hundred entries a
second; these do a batch at once. A failed write is logged and the DLQ operation goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from sqlalchemy import Connection, Engine, Table, bindparam, select, update

from recovery.audit.failures import describe
from recovery.audit.models import DeadLetter, DeadLetterState, Job, JobStatus
from recovery.audit.writer import AuditWriter
from recovery.core.message import JobSpec
from recovery.core.redact import redact_text

log = structlog.get_logger(__name__)


_JOBS: Table = Job.__table__  # type: ignore[assignment]
_DEAD: Table = DeadLetter.__table__  # type: ignore[assignment]


def _guarded(engine: Engine, table: str, write: Callable[[Connection], None]) -> bool:
    try:
        with engine.begin() as conn:
            write(conn)
        return True
    except Exception as exc:
        log.warning("audit_write_failed", table=table, error=describe(exc),
                    error_type=type(exc).__name__)
        return False


def mark_dead_letters(engine: Engine, job_ids: Sequence[str], state: str, reason: str) -> bool:
    """Move dead-letter rows to `state` (replayed, quarantined, purged, parked) in one go."""
    values = {"state": DeadLetterState(state).value, "state_reason": redact_text(reason)}

    def write(conn: Connection) -> None:
        conn.execute(update(_DEAD).where(_DEAD.c.job_id.in_(list(job_ids))).values(values))

    return _guarded(engine, "dead_letters", write)


def mark_requeued(audit: AuditWriter, jobs: Sequence[JobSpec], reason: str) -> None:
    """Jobs back to `queued` with their higher replay count; their dead letters `replayed`.

    A job without a row (its audit write was lost when it was enqueued) gets one through
    `AuditWriter.job_queued`.
    """
    ids = [job.job_id for job in jobs]
    present: set[str] = set()

    def write(conn: Connection) -> None:
        present.update(conn.scalars(select(_JOBS.c.id).where(_JOBS.c.id.in_(ids))))
        rows = [{"b_id": job.job_id, "b_rc": job.replay_count} for job in jobs
                if job.job_id in present]
        if rows:
            conn.execute(update(_JOBS).where(_JOBS.c.id == bindparam("b_id"),
                                             _JOBS.c.replay_count < bindparam("b_rc"))
                         .values(status=JobStatus.QUEUED.value, replay_count=bindparam("b_rc"),
                                 finished_at=None, updated_at=datetime.now(UTC)), rows)
        conn.execute(update(_DEAD).where(_DEAD.c.job_id.in_(ids)).values(
            state=DeadLetterState.REPLAYED.value, state_reason=redact_text(reason)))

    if not _guarded(audit.engine, "jobs", write):
        return
    for job in jobs:
        if job.job_id not in present:
            audit.job_queued(job.job_id, job.integration, job.method, job.path,
                             job.params, job.idempotency_key, replay_count=job.replay_count)


def revert_requeued(audit: AuditWriter, jobs: Sequence[JobSpec], reason: str) -> None:
    """Undo `mark_requeued` for jobs that were not published, unless a worker moved them on."""
    rows = [{"b_id": job.job_id, "b_rc": job.replay_count} for job in jobs]

    def write(conn: Connection) -> None:
        conn.execute(update(_JOBS).where(_JOBS.c.id == bindparam("b_id"),
                                         _JOBS.c.replay_count == bindparam("b_rc"),
                                         _JOBS.c.status == JobStatus.QUEUED.value)
                     .values(status=JobStatus.DEAD.value, replay_count=bindparam("b_rc") - 1,
                             updated_at=datetime.now(UTC)), rows)

    _guarded(audit.engine, "jobs", write)
    mark_dead_letters(audit.engine, [job.job_id for job in jobs], "parked", reason)
