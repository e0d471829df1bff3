"""Writes the audit trail: jobs, attempts, breaker transitions, health checks, DLQ, alerts.

The audit trail explains what happened to a job; it is not where the job lives. So no method
here ever raises: a failed write is logged (``audit_write_failed``) and reported by returning
False, and the job carries on. Free text and request details are redacted again on the way in,
so a caller that forgot cannot put a secret into the database.

Job and attempt writes become `recovery.audit.ops.Op` values: written at once, or, in Celery
workers, buffered and written in batches by `recovery.audit.spool.AuditBatcher`, which spools
them to Redis while the database is away (see those modules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from sqlalchemy import Connection, Engine, Table, update

from recovery.audit.bounds import DEFAULT_MAX_ENTRIES
from recovery.audit.failures import describe, is_data_error, is_kept, sqlstate
from recovery.audit.models import (
    Alert,
    AttemptDecision,
    AttemptKind,
    AttemptRecord,
    BreakerTransition,
    DeadLetter,
    DeadLetterRecord,
    DeadLetterState,
    HealthCheck,
    JobStatus,
)
from recovery.audit.ops import (
    Op,
    Rejected,
    job_values,
    new_dedupe_key,
    next_seq,
    queued_op,
    utc_iso,
)
from recovery.audit.spool import AuditBatcher, batching_enabled
from recovery.audit.sql import dialect_insert, execute_op
from recovery.audit.stream import RedisSpool, SpoolUnavailable
from recovery.core.redact import redact_text

__all__ = ["AttemptRecord", "AuditWriter", "DeadLetterRecord", "make_audit_writer"]

log = structlog.get_logger(__name__)

_TRANSITIONS: Table = BreakerTransition.__table__  # type: ignore[assignment]
_HEALTH: Table = HealthCheck.__table__  # type: ignore[assignment]
_DEAD: Table = DeadLetter.__table__  # type: ignore[assignment]
_ALERTS: Table = Alert.__table__  # type: ignore[assignment]


def utc_now() -> datetime:
    return datetime.now(UTC)


class AuditWriter:
    """Audit-trail writes on one engine. Every method returns True on success, False otherwise.

    With a `batcher`, job and attempt writes are buffered and written in batches (True then
    means accepted); with a `spool` and no batcher, a write the database cannot take right now
    goes to the Redis spool instead. The other tables are always written at once.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now,
                 batcher: AuditBatcher | None = None, spool: RedisSpool | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._batcher = batcher
        self._spool = spool

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def batcher(self) -> AuditBatcher | None:
        return self._batcher

    def commit(self) -> bool:
        """Make buffered job and attempt writes durable (the Redis spool) before going on."""
        return True if self._batcher is None else self._batcher.commit()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write buffered and spooled job and attempt rows to the database now."""
        return True if self._batcher is None else self._batcher.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Commit and stop the batcher's thread (the spool keeps what is not written yet)."""
        return True if self._batcher is None else self._batcher.close(timeout_s)

    def job_queued(
        self,
        job_id: str,
        integration: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        idempotency_key: str | None,
        replay_count: int = 0,
        seq: int | None = None,
    ) -> bool:
        """Record a job the producer enqueued. A repeated write for the same job changes
        nothing, except that an operator's replay (a higher ``replay_count``) is counted and
        queues a finished job again. A replay that a worker already picked up (the message is
        published before this write) stays running.

        ``seq`` (`recovery.audit.ops.next_seq`) orders this write among the job's others: a
        producer that publishes first takes it before publishing, so a worker's writes, even
        if they reach the database later, outrank "queued". (`recovery.enqueue` hands this
        row to the Redis spool instead: `recovery.engine.producer_runtime`.)
        """

        def build() -> Op:
            return queued_op(job_id, integration, method, path, params, idempotency_key,
                             now=self._clock(), seq=seq, replay_count=replay_count)

        return self._record("jobs", build, job_id)

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

        def build() -> Op:
            values = job_values(integration, method, path, params, idempotency_key, self._now())
            return Op("job_started", job_id, next_seq(), {**values, "attempt": int(attempt)})

        return self._record("jobs", build, job_id)

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
        Returns False when the job has no row yet (written at once) or the status is unknown.
        A write older than the job's latest (see `recovery.audit.sql`) changes nothing.
        """

        def build() -> Op:
            values = {"status": JobStatus(status).value, "now": self._now(),
                      "attempts": attempts, "deferrals": deferrals,
                      "outcome": _redacted_text(outcome), "strategy": strategy,
                      "fallback_used": fallback_used, "last_status": last_status,
                      "last_error": _redacted_text(last_error), "finished": bool(finished)}
            return Op("job_status", job_id, next_seq(), values)

        return self._record("jobs", build, job_id)

    def attempt(self, record: AttemptRecord) -> bool:
        """Record one attempt. A repeated write with the same ``dedupe_key`` is ignored; a
        record without one gets a fresh key, which stays with it through batches and the spool.
        """

        def build() -> Op:
            values = {
                "number": int(record.number),
                "kind": AttemptKind(record.kind).value,
                "started_at": utc_iso(record.started_at),
                "duration_ms": int(record.duration_ms),
                "http_status": record.http_status,
                "error_categories": sorted(str(c) for c in record.error_categories),
                "retryable": record.retryable,
                "error_message": _redacted_text(record.error_message),
                "decision": AttemptDecision(record.decision).value,
                "delay_ms": record.delay_ms,
                "delay_source": record.delay_source,
                "strategy": record.strategy,
                "worker": record.worker,
                "task_id": record.task_id,
                "dedupe_key": record.dedupe_key or new_dedupe_key(),
            }
            return Op("attempt", record.job_id, next_seq(), values)

        return self._record("attempts", build, record.job_id)

    def breaker_transition(
        self,
        integration: str,
        from_state: str,
        to_state: str,
        reason: str,
        at: datetime | None = None,
    ) -> bool:
        return self._insert(_TRANSITIONS, integration=integration, from_state=from_state,
                            to_state=to_state, reason=_redacted_text(reason),
                            at=at or self._clock())

    def health_check(
        self,
        integration: str,
        ok: bool,
        latency_ms: int,
        http_status: int | None = None,
        error: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        return self._insert(_HEALTH, integration=integration, ok=ok, http_status=http_status,
                            latency_ms=latency_ms, error=_redacted_text(error),
                            at=at or self._clock())

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
            stmt = dialect_insert(conn, _DEAD).values(row)
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
        return self._insert(_ALERTS, kind=kind, integration=integration,
                            message=_redacted_text(message), details=dict(details or {}),
                            at=at or self._clock())

    def _now(self) -> str:
        return utc_iso(self._clock())

    def _record(self, table: str, build: Callable[[], Op], job_id: str) -> bool:
        """Build the op (bad input fails here, logged) and buffer, spool or write it."""
        try:
            op = build()
        except Exception as exc:
            log.warning("audit_write_failed", table=table, error=describe(exc),
                        error_type=type(exc).__name__, job_id=job_id)
            return False
        if self._batcher is not None:
            return self._batcher.submit(op)
        return self._write_now(table, op)

    def _write_now(self, table: str, op: Op) -> bool:
        try:
            with self._engine.begin() as conn:
                written = execute_op(conn, op)
        except Exception as exc:
            if self._spool is not None and is_kept(exc) and self._spool_op(op):
                return True
            if self._spool is not None and is_data_error(exc):
                self._spool.rejected.put([Rejected(op, describe(exc), sqlstate(exc))])
                return False
            log.warning("audit_write_failed", table=table, error=describe(exc),
                        error_type=type(exc).__name__, job_id=op.job_id)
            return False
        if not written:
            log.warning("audit_job_missing", table=table, job_id=op.job_id,
                        status=op.values.get("status"))
        return written

    def _spool_op(self, op: Op) -> bool:
        assert self._spool is not None
        try:
            self._spool.append([op])
        except SpoolUnavailable as exc:
            log.error("audit_spool_unavailable", error=str(exc), job_id=op.job_id)
            return False
        log.warning("audit_spooled", kind=op.kind, job_id=op.job_id)
        return True

    def _insert(self, table: Table, *, integration: str | None, **values: Any) -> bool:
        """Insert one row of an ops table (transitions, health checks, alerts), guarded."""

        def write(conn: Connection) -> bool:
            conn.execute(table.insert().values(integration=integration, **values))
            return True

        return self._guarded(table.name, write, integration=integration)

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
                error=describe(exc),
                error_type=type(exc).__name__,
                **context,
            )
            return False


def make_audit_writer(engine: Engine, client: redis.Redis | None, key_prefix: str, *,
                      spool_max_entries: int = DEFAULT_MAX_ENTRIES) -> AuditWriter:
    """The writer a runtime uses: batched in processes that called
    `recovery.audit.spool.enable_batching` (Celery workers), written at once elsewhere (the
    producer, the CLI: they read their own writes); both spool to Redis while the database is
    away, when there is a Redis client.
    """
    spool = (RedisSpool(client, key_prefix, max_entries=spool_max_entries)
             if client is not None else None)
    if batching_enabled():
        return AuditWriter(engine, batcher=AuditBatcher(engine, spool))
    return AuditWriter(engine, spool=spool)


def _redacted_text(text: str | None) -> str | None:
    """Redacted free text that any database accepts (PostgreSQL rejects NUL characters)."""
    return None if text is None else redact_text(text).replace("\x00", "\ufffd")
