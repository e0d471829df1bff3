"""The DLQ's bound: at most DLQ_MAX_ENTRIES entries, none older than DLQ_MAX_AGE_DAYS.

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

import structlog
from sqlalchemy import Table, insert

from recovery.alerts import alert
from recovery.audit.models import DeadLetterArchive
from recovery.dlq.envelope import FERNET
from recovery.dlq.marks import mark_dead_letters
from recovery.dlq.store import (
    DlqBusyError,
    DlqLock,
    Entry,
    QueueList,
    decode_entry,
    envelope_view,
    shown_raw,
)
from recovery.jobs import parse_time
from recovery.redact import redact_text
from recovery.runtime import Runtime

log = structlog.get_logger(__name__)

TRIM_BATCH = 500
#: After PostgreSQL refused an archive, parks do not try (and alert) again for this long.
RETRY_AFTER_FAILURE_S = 60
_ARCHIVE: Table = DeadLetterArchive.__table__  # type: ignore[assignment]


@dataclass
class TrimReport:
    archived: int = 0
    by_count: int = 0
    by_age: int = 0
    errors: list[str] = field(default_factory=list)


def _dead_at(entry: Entry) -> datetime | None:
    if entry.envelope is None:
        return None
    try:
        return parse_time(entry.envelope.dead_at)
    except (TypeError, ValueError):
        return None


def over_cap(rt: Runtime, dlq: QueueList) -> bool:
    """Whether the DLQ holds more than DLQ_MAX_ENTRIES, or its oldest entry is too old."""
    with dlq.client.pipeline(transaction=False) as pipe:
        pipe.llen(dlq.key)
        pipe.lindex(dlq.key, -1)
        length, oldest = pipe.execute()
    if int(length) > rt.settings.dlq_max_entries:
        return True
    if oldest is None:
        return False
    dead_at = _dead_at(decode_entry(oldest))
    return dead_at is not None and dead_at < _cutoff(rt)


def _cutoff(rt: Runtime) -> datetime:
    return datetime.now(UTC) - timedelta(days=rt.settings.dlq_max_age_days)


def archive_row(entry: Entry, cause: str, at: datetime) -> dict[str, Any]:
    """One `dead_letter_archive` row: the redacted view, and the original only if encrypted."""
    envelope = entry.envelope
    if envelope is not None:
        shown: dict[str, Any] = envelope_view(envelope)
        stored = envelope.original.stored() if envelope.original is not None else None
    else:
        raw, stored = shown_raw(entry)
        shown = {"kind": "malformed", "problem": entry.problem, "raw": raw}
    token = (stored.get("token") if isinstance(stored, dict) and stored.get("format") == FERNET
             else None)
    return {"job_id": entry.job_id, "integration": envelope.integration if envelope else None,
            "cause": cause, "dead_at": _dead_at(entry), "archived_at": at, "envelope": shown,
            "original": token if isinstance(token, str) else None}


def _selected(rt: Runtime, dlq: QueueList) -> list[tuple[Entry, str]]:
    """The oldest entries over the count cap, then the further ones past the age cap."""
    length = len(dlq)
    excess = max(0, length - rt.settings.dlq_max_entries)
    cutoff = _cutoff(rt)
    chosen: list[tuple[Entry, str]] = []
    for index, entry in enumerate(dlq.scan(stop_after=length)):
        if index < excess:
            chosen.append((entry, "count"))
            continue
        dead_at = _dead_at(entry)
        if dead_at is None:
            continue  # malformed: the next replay quarantines it
        if dead_at >= cutoff:
            break  # the list is in dead-letter order: the rest is younger
        chosen.append((entry, "age"))
    return chosen


def _archive(rt: Runtime, dlq: QueueList, batch: list[tuple[Entry, str]],
             report: TrimReport) -> bool:
    """Archive, then remove one batch; False (entries kept) when PostgreSQL refused it."""
    at = datetime.now(UTC)
    rows = [archive_row(entry, cause, at) for entry, cause in batch]
    try:
        with rt.audit.engine.begin() as conn:
            conn.execute(insert(_ARCHIVE), rows)
    except Exception as exc:
        report.errors.append(redact_text(str(exc))[:300])
        return False
    dlq.remove_many([entry.raw for entry, _ in batch])
    ids = [entry.job_id for entry, _ in batch if entry.envelope is not None and entry.job_id]
    if ids:
        mark_dead_letters(rt.audit.engine, ids, "purged",
                          "archived to dead_letter_archive by the DLQ cap")
    report.archived += len(batch)
    report.by_count += sum(1 for _, cause in batch if cause == "count")
    report.by_age += sum(1 for _, cause in batch if cause == "age")
    return True


def trim(rt: Runtime, dlq: QueueList, actor: str) -> TrimReport:
    """Archive and remove what is over the cap (the caller checked `over_cap`)."""
    report = TrimReport()
    with DlqLock(dlq.client, rt.settings.redis_key_prefix, actor) as lock:
        chosen = _selected(rt, dlq)
        for start in range(0, len(chosen), TRIM_BATCH):
            if not _archive(rt, dlq, chosen[start:start + TRIM_BATCH], report):
                break
            lock.extend()
    if report.errors:
        dlq.client.set(_backoff_key(rt), actor, ex=RETRY_AFTER_FAILURE_S)
    _alert(rt, report, actor)
    return report


def _backoff_key(rt: Runtime) -> str:
    return f"{rt.settings.redis_key_prefix}dlq:trim-failed"


def _alert(rt: Runtime, report: TrimReport, actor: str) -> None:
    limits = (f"DLQ_MAX_ENTRIES is {rt.settings.dlq_max_entries}, DLQ_MAX_AGE_DAYS is "
              f"{rt.settings.dlq_max_age_days}")
    if report.archived:
        alert("dlq_trimmed",
              f"{report.archived} dead letters ({report.by_count} over the count cap, "
              f"{report.by_age} past the age cap) were moved from the DLQ to the "
              f"dead_letter_archive table; {limits}.",
              archived=report.archived, by_count=report.by_count, by_age=report.by_age,
              actor=actor)
    if report.errors:
        alert("dlq_trim_failed",
              f"The DLQ is over its cap ({limits}) but PostgreSQL did not take the entries to "
              f"archive, so they stay in Redis: {report.errors[0]}",
              actor=actor)


def enforce_cap(rt: Runtime, actor: str) -> TrimReport | None:
    """Trim the DLQ when it is over its cap; None when it is not, or another run holds it.
    Never raises: the cap must not fail a park or a scheduled replay."""
    if rt.redis is None:
        return None
    dlq = QueueList(rt.redis, rt.settings.redis_key_prefix)
    try:
        if not over_cap(rt, dlq) or dlq.client.exists(_backoff_key(rt)):
            return None
        return trim(rt, dlq, actor)
    except DlqBusyError:
        return None
    except Exception as exc:
        log.warning("dlq_cap_failed", error=redact_text(str(exc))[:300],
                    error_type=type(exc).__name__)
        return None
