"""Writes the audit trail: jobs, attempts, breaker transitions, health checks, DLQ, alerts.

The audit trail explains what happened to a job; it is not where the job lives. So no method
here ever raises: a failed write is logged (``audit_write_failed``) and reported by returning
False, and the job carries on. Free text and request details are redacted again on the way in,
so a caller that forgot cannot put a secret into the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, Table, case, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError

from recovery.audit.models import (
    TERMINAL_STATUSES,
    Alert,
    Attempt,
    AttemptRecord,
    BreakerTransition,
    DeadLetter,
    DeadLetterRecord,
    DeadLetterState,
    HealthCheck,
    Job,
    JobStatus,
)
from recovery.redact import redact_params, redact_text, redact_url

__all__ = ["AttemptRecord", "AuditWriter", "DeadLetterRecord"]

log = structlog.get_logger(__name__)

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
_TRANSITIONS: Table = BreakerTransition.__table__  # type: ignore[assignment]
_HEALTH: Table = HealthCheck.__table__  # type: ignore[assignment]
_DEAD: Table = DeadLetter.__table__  # type: ignore[assignment]
_ALERTS: Table = Alert.__table__  # type: ignore[assignment]


def utc_now() -> datetime:
    return datetime.now(UTC)


class AuditWriter:
    """Audit-trail writes on one engine. Every method returns True on success, False otherwise."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    @property
    def engine(self) -> Engine:
        return self._engine

    def job_queued(
        self,
        job_id: str,
        integration: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        idempotency_key: str | None,
        replay_count: int = 0,
    ) -> bool:
        """Record a job the producer enqueued. A repeated write for the same job changes
        nothing, except that an operator's replay (a higher ``replay_count``) is counted and
        queues a finished job again. A replay that a worker already picked up (the message is
        published before this write) stays running.
        """

        def write(conn: Connection) -> bool:
            now = self._clock()
            row = _new_job_row(job_id, integration, method, path, params, idempotency_key, now)
            row.update(status=JobStatus.QUEUED.value, replay_count=replay_count)
            stmt = self._insert(_JOBS).values(row)
            finished = _JOBS.c.status.in_([status.value for status in TERMINAL_STATUSES])
            stmt = stmt.on_conflict_do_update(
                index_elements=[_JOBS.c.id],
                set_={
                    "status": case((finished, JobStatus.QUEUED.value), else_=_JOBS.c.status),
                    "replay_count": stmt.excluded.replay_count,
                    "finished_at": case((finished, None), else_=_JOBS.c.finished_at),
                    "updated_at": now,
                },
                where=_JOBS.c.replay_count < stmt.excluded.replay_count,
            )
            conn.execute(stmt)
            return True

        return self._guarded("jobs", write, job_id=job_id)

    def job_started(
        self,
        job_id: str,
        integration: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        idempotency_key: str | None,
        attempt: int,
    ) -> bool:
        """Mark a job running on its ``attempt``-th call, creating the row if the producer's
        write never arrived (the producer's database may have been down).
        """

        def write(conn: Connection) -> bool:
            now = self._clock()
            row = _new_job_row(job_id, integration, method, path, params, idempotency_key, now)
            row.update(status=JobStatus.RUNNING.value, attempts=attempt)
            stmt = self._insert(_JOBS).values(row)
            stmt = stmt.on_conflict_do_update(
                index_elements=[_JOBS.c.id],
                set_={
                    "status": JobStatus.RUNNING.value,
                    "attempts": attempt,
                    "finished_at": None,
                    "updated_at": now,
                },
            )
            conn.execute(stmt)
            return True

        return self._guarded("jobs", write, job_id=job_id)

    def job_status(
        self,
        job_id: str,
        status: str,
        *,
        attempts: int | None = None,
        deferrals: int | None = None,
        outcome: str | None = None,
        strategy: str | None = None,
        fallback_used: str | None = None,
        last_status: int | None = None,
        last_error: str | None = None,
        finished: bool = False,
    ) -> bool:
        """Update a job's status and whichever details are given; ``None`` leaves a field as is.

        ``fallback_used`` is the kind of fallback that answered (api, cache, default, degraded).
        Returns False when the job has no row yet.
        """

        def write(conn: Connection) -> bool:
            now = self._clock()
            values: dict[str, Any] = {"status": JobStatus(status).value, "updated_at": now}
            optional = {
                "attempts": attempts,
                "deferrals": deferrals,
                "outcome": _redacted_text(outcome),
                "strategy": strategy,
                "fallback_used": fallback_used,
                "last_status": last_status,
                "last_error": _redacted_text(last_error),
            }
            values.update({name: value for name, value in optional.items() if value is not None})
            if finished:
                values["finished_at"] = now
            result = conn.execute(update(_JOBS).where(_JOBS.c.id == job_id).values(values))
            if result.rowcount == 0:
                log.warning("audit_job_missing", table="jobs", job_id=job_id, status=status)
                return False
            return True

        return self._guarded("jobs", write, job_id=job_id)

    def attempt(self, record: AttemptRecord) -> bool:
        """Record one attempt. A repeated write with the same ``dedupe_key`` is ignored."""

        def write(conn: Connection) -> bool:
            row = {
                "job_id": record.job_id,
                "number": record.number,
                "kind": record.kind,
                "started_at": record.started_at,
                "duration_ms": record.duration_ms,
                "http_status": record.http_status,
                "error_categories": sorted(str(c) for c in record.error_categories),
                "retryable": record.retryable,
                "error_message": _redacted_text(record.error_message),
                "decision": record.decision,
                "delay_ms": record.delay_ms,
                "delay_source": record.delay_source,
                "strategy": record.strategy,
                "worker": record.worker,
                "task_id": record.task_id,
                "dedupe_key": record.dedupe_key,
            }
            stmt = self._insert(_ATTEMPTS).values(row)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[_ATTEMPTS.c.dedupe_key]))
            return True

        return self._guarded("attempts", write, job_id=record.job_id)

    def breaker_transition(
        self,
        integration: str,
        from_state: str,
        to_state: str,
        reason: str,
        at: datetime | None = None,
    ) -> bool:
        def write(conn: Connection) -> bool:
            conn.execute(
                _TRANSITIONS.insert().values(
                    integration=integration,
                    from_state=from_state,
                    to_state=to_state,
                    reason=_redacted_text(reason),
                    at=at or self._clock(),
                )
            )
            return True

        return self._guarded("breaker_transitions", write, integration=integration)

    def health_check(
        self,
        integration: str,
        ok: bool,
        latency_ms: int,
        http_status: int | None = None,
        error: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        def write(conn: Connection) -> bool:
            conn.execute(
                _HEALTH.insert().values(
                    integration=integration,
                    ok=ok,
                    http_status=http_status,
                    latency_ms=latency_ms,
                    error=_redacted_text(error),
                    at=at or self._clock(),
                )
            )
            return True

        return self._guarded("health_checks", write, integration=integration)

    def dead_letter(self, record: DeadLetterRecord) -> bool:
        """Park a job in ``dead_letters``; a job dead again after a replay is parked afresh."""

        def write(conn: Connection) -> bool:
            row = {
                "job_id": record.job_id,
                "integration": record.integration,
                "task_name": record.task_name,
                "error_categories": sorted(str(c) for c in record.error_categories),
                "last_status": record.last_status,
                "message": _redacted_text(record.message),
                "attempts": record.attempts,
                "first_enqueued_at": record.first_enqueued_at,
                "dead_at": record.dead_at or self._clock(),
                "replay_count": record.replay_count,
                "state": DeadLetterState.PARKED.value,
                "state_reason": None,
                "envelope": dict(record.envelope),
            }
            stmt = self._insert(_DEAD).values(row)
            refreshed = {name: value for name, value in row.items() if name != "job_id"}
            stmt = stmt.on_conflict_do_update(index_elements=[_DEAD.c.job_id], set_=refreshed)
            conn.execute(stmt)
            return True

        return self._guarded("dead_letters", write, job_id=record.job_id)

    def dead_letter_state(self, job_id: str, state: str, reason: str | None) -> bool:
        """Move a dead letter to ``state`` (parked, replayed, quarantined, purged)."""

        def write(conn: Connection) -> bool:
            stmt = (
                update(_DEAD)
                .where(_DEAD.c.job_id == job_id)
                .values(state=DeadLetterState(state).value, state_reason=_redacted_text(reason))
            )
            if conn.execute(stmt).rowcount == 0:
                log.warning("audit_dead_letter_missing", table="dead_letters", job_id=job_id)
                return False
            return True

        return self._guarded("dead_letters", write, job_id=job_id)

    def alert(
        self,
        kind: str,
        integration: str | None,
        message: str,
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> bool:
        def write(conn: Connection) -> bool:
            conn.execute(
                _ALERTS.insert().values(
                    kind=kind,
                    integration=integration,
                    message=_redacted_text(message),
                    details=dict(details or {}),
                    at=at or self._clock(),
                )
            )
            return True

        return self._guarded("alerts", write, integration=integration)

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that supports ON CONFLICT on this engine's dialect."""
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        if self._engine.dialect.name == "sqlite":
            return sqlite.insert(table)
        raise NotImplementedError(
            f"The audit trail supports PostgreSQL and SQLite, not {self._engine.dialect.name}. "
            "Point DATABASE_URL at a PostgreSQL or SQLite database."
        )

    def _guarded(self, table: str, write: Callable[[Connection], bool], **context: Any) -> bool:
        """Run ``write`` in one transaction; log and swallow any failure.

        Any exception is caught, not only database errors: bad input (an unknown status, a
        value JSON cannot encode) must not fail the job either.
        """
        try:
            with self._engine.begin() as conn:
                return write(conn)
        except Exception as exc:
            log.warning(
                "audit_write_failed",
                table=table,
                error=_describe(exc),
                error_type=type(exc).__name__,
                **context,
            )
            return False


def _new_job_row(
    job_id: str,
    integration: str,
    method: str,
    path: str,
    params: Mapping[str, Any] | None,
    idempotency_key: str | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": job_id,
        "integration": integration,
        "method": method.upper(),
        "path": redact_url(path),
        "params": redact_params(params or {}),
        "idempotency_key": idempotency_key,
        "attempts": 0,
        "deferrals": 0,
        "replay_count": 0,
        "first_seen_at": now,
        "updated_at": now,
    }


def _redacted_text(text: str | None) -> str | None:
    """Redacted free text that any database accepts (PostgreSQL rejects NUL characters)."""
    return None if text is None else redact_text(text).replace("\x00", "\ufffd")


def _describe(exc: BaseException) -> str:
    """A short, secret-free description: the driver's message, without SQL or bound values."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    try:
        return redact_text(str(cause).strip())[:500]
    except Exception:
        return type(cause).__name__
