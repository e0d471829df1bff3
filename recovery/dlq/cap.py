"""The DLQ's bound: at most DLQ_MAX_ENTRIES entries, none older than DLQ_MAX_AGE_DAYS, in
`dlq` and in `dlq.quarantine` each.

Like Sidekiq's dead set (10,000 jobs or 6 months), but nothing is dropped silently: the oldest
entries over the bound are written to the PostgreSQL table `dead_letter_archive` first (the
redacted view, and the original request only as a Fernet token when encryption is on), then
removed from Redis, and an alert says how many went. If PostgreSQL does not take them, they
stay in the DLQ, an alert says so, and the next attempt waits a minute (no alert per park
during an outage).

`over_cap` costs one Redis round trip (LLEN and the oldest entry, pipelined); it runs after
every park and on Beat's replay schedule. The trim itself holds the DLQ lock; when a replay or
purge holds it, the trim waits for the next park or the next scheduled run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import structlog
from sqlalchemy import Table, insert

from recovery.audit.failures import describe
from recovery.audit.models import DeadLetterArchive
from recovery.config.queues import DLQ_QUEUE, QUARANTINE_QUEUE
from recovery.core.message import MalformedJobError, parse_time
from recovery.dlq.context import DlqRuntime
from recovery.dlq.envelope import FERNET
from recovery.dlq.marks import mark_dead_letters
from recovery.dlq.quarantine import QuarantineRecord, shown_raw
from recovery.dlq.store import DlqBusyError, DlqLock, Entry, QueueList, decode_entry, envelope_view
from recovery.telemetry.alerts import alert

log = structlog.get_logger(__name__)

TRIM_BATCH = 500
#: After PostgreSQL refused an archive, parks do not try (and alert) again for this long.
RETRY_AFTER_FAILURE_S = 60
_ARCHIVE: Table = DeadLetterArchive.__table__  # type: ignore[assignment]


@dataclass
class TrimReport:
    queue: str = DLQ_QUEUE
    archived: int = 0
    by_count: int = 0
    by_age: int = 0
    errors: list[str] = field(default_factory=list)


def _record(entry: Entry) -> QuarantineRecord | None:
    try:
        return QuarantineRecord.from_message(entry.data)
    except (MalformedJobError, TypeError):
        return None


def _time(text: Any) -> datetime | None:
    try:
        return parse_time(text) if isinstance(text, str) and text else None
    except (TypeError, ValueError):
        return None


def _dead_at(entry: Entry) -> datetime | None:
    """When a DLQ entry died (None when malformed)."""
    return _time(entry.envelope.dead_at) if entry.envelope is not None else None


def _held_since(entry: Entry, queue: str) -> datetime | None:
    """The time the age cap counts from: death in `dlq`, quarantine in `dlq.quarantine`."""
    if queue == DLQ_QUEUE:
        return _dead_at(entry)
    record = _record(entry)
    return _time(record.quarantined_at) if record is not None else None


def over_cap(rt: DlqRuntime, client: redis.Redis, queues: list[QueueList]) -> list[QueueList]:
    """The queues holding more than DLQ_MAX_ENTRIES, or whose oldest entry is too old
    (one round trip for all of them)."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue.key)
            pipe.lindex(queue.key, -1)
        answers = pipe.execute()
    over = []
    for queue, length, oldest in zip(queues, answers[::2], answers[1::2], strict=True):
        since = _held_since(decode_entry(oldest), queue.queue) if oldest is not None else None
        if int(length) > rt.settings.dlq_max_entries or (since is not None
                                                         and since < _cutoff(rt)):
            over.append(queue)
    return over


def _cutoff(rt: DlqRuntime) -> datetime:
    return datetime.now(UTC) - timedelta(days=rt.settings.dlq_max_age_days)


def _token(stored: Any) -> str | None:
    """The Fernet token of a sealed original; None for a plain one (never archived)."""
    if isinstance(stored, dict) and stored.get("format") == FERNET:
        token = stored.get("token")
        return token if isinstance(token, str) else None
    return None


def archive_row(entry: Entry, queue: str, cause: str, at: datetime) -> dict[str, Any]:
    """One `dead_letter_archive` row: the redacted view, and the original only if encrypted."""
    row = {"job_id": entry.job_id, "integration": None, "cause": cause, "archived_at": at,
           "dead_at": _dead_at(entry)}
    envelope = entry.envelope
    record = _record(entry) if queue != DLQ_QUEUE else None
    if envelope is not None:
        return {**row, "integration": envelope.integration, "envelope": envelope_view(envelope),
                "original": _token(envelope.original.stored() if envelope.original else None)}
    if record is not None:
        dead_at = _time((record.envelope or {}).get("dead_at"))
        return {**row, "job_id": record.job_id, "integration": record.integration,
                "dead_at": dead_at, "envelope": {**record.view(), "kind": "quarantined"},
                "original": _token(record.original)}
    raw, stored = shown_raw(entry)
    return {**row, "envelope": {"kind": "malformed", "problem": entry.problem, "raw": raw},
            "original": _token(stored)}


def _selected(rt: DlqRuntime, queue: QueueList) -> list[tuple[Entry, str]]:
    """The oldest entries over the count cap, then the further ones past the age cap."""
    length = len(queue)
    excess = max(0, length - rt.settings.dlq_max_entries)
    cutoff = _cutoff(rt)
    chosen: list[tuple[Entry, str]] = []
    for index, entry in enumerate(queue.scan(stop_after=length)):
        if index < excess:
            chosen.append((entry, "count"))
            continue
        since = _held_since(entry, queue.queue)
        if since is None:
            continue  # unreadable: only the count cap takes it
        if since >= cutoff:
            break  # the list is in arrival order: the rest is younger
        chosen.append((entry, "age"))
    return chosen


def _archive(rt: DlqRuntime, dlq: QueueList, batch: list[tuple[Entry, str]],
             report: TrimReport) -> bool:
    """Archive, then remove one batch; False (entries kept) when PostgreSQL refused it."""
    at = datetime.now(UTC)
    rows = [archive_row(entry, dlq.queue, cause, at) for entry, cause in batch]
    try:
        with rt.audit.engine.begin() as conn:
            conn.execute(insert(_ARCHIVE), rows)
    except Exception as exc:
        report.errors.append(describe(exc))
        return False
    dlq.remove_many([entry.raw for entry, _ in batch])
    ids = [row["job_id"] for row in rows if row["job_id"] and row["integration"]]
    if ids:
        mark_dead_letters(rt.audit.engine, ids, "purged",
                          "archived to dead_letter_archive by the DLQ cap")
    report.archived += len(batch)
    report.by_count += sum(1 for _, cause in batch if cause == "count")
    report.by_age += sum(1 for _, cause in batch if cause == "age")
    return True


def trim(rt: DlqRuntime, queue: QueueList, actor: str) -> TrimReport:
    """Archive and remove what is over the cap (the caller checked `over_cap`)."""
    report = TrimReport(queue=queue.queue)
    with DlqLock(queue.client, rt.settings.redis_key_prefix, actor) as lock:
        chosen = _selected(rt, queue)
        for start in range(0, len(chosen), TRIM_BATCH):
            if not _archive(rt, queue, chosen[start:start + TRIM_BATCH], report):
                break
            lock.extend()
    if report.errors:
        queue.client.set(_backoff_key(rt), actor, ex=RETRY_AFTER_FAILURE_S)
    _alert(rt, report, actor)
    return report


def _backoff_key(rt: DlqRuntime) -> str:
    return f"{rt.settings.redis_key_prefix}dlq:trim-failed"


def _alert(rt: DlqRuntime, report: TrimReport, actor: str) -> None:
    limits = (f"DLQ_MAX_ENTRIES is {rt.settings.dlq_max_entries}, DLQ_MAX_AGE_DAYS is "
              f"{rt.settings.dlq_max_age_days}")
    if report.archived:
        alert("dlq_trimmed",
              f"{report.archived} entries ({report.by_count} over the count cap, "
              f"{report.by_age} past the age cap) were moved from the {report.queue!r} queue "
              f"to the dead_letter_archive table; {limits}.",
              queue=report.queue, archived=report.archived, by_count=report.by_count,
              by_age=report.by_age, actor=actor)
    if report.errors:
        alert("dlq_trim_failed",
              f"The {report.queue!r} queue is over its cap ({limits}) but PostgreSQL did not "
              f"take the entries to archive, so they stay in Redis: {report.errors[0]}",
              queue=report.queue, actor=actor)


def enforce_cap(rt: DlqRuntime, actor: str) -> TrimReport | None:
    """Trim `dlq` and `dlq.quarantine` when over their cap; the combined report, or None when
    neither is over (or another run holds the DLQ). Never raises: the cap must not fail a park
    or a scheduled replay."""
    if rt.redis is None:
        return None
    prefix = rt.settings.redis_key_prefix
    queues = [QueueList(rt.redis, prefix), QueueList(rt.redis, prefix, QUARANTINE_QUEUE)]
    try:
        over = over_cap(rt, rt.redis, queues)
        if not over or rt.redis.exists(_backoff_key(rt)):
            return None
        reports = [trim(rt, queue, actor) for queue in over]
    except DlqBusyError:
        return None
    except Exception as exc:
        log.warning("dlq_cap_failed", error=describe(exc),
                    error_type=type(exc).__name__)
        return None
    return TrimReport(queue=",".join(r.queue for r in reports),
                      archived=sum(r.archived for r in reports),
                      by_count=sum(r.by_count for r in reports),
                      by_age=sum(r.by_age for r in reports),
                      errors=[e for r in reports for e in r.errors])
