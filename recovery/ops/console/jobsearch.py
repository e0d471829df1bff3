"""Job search for the console: by id, idempotency key, integration, status and time range.

Rows are the `jobs` table as `recovery-cli jobs list --json` returns them (the audit trail
stores paths and params redacted); one job's attempts come from `get_job`, like `jobs show`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Table, select

from recovery.audit.models import Job, JobStatus
from recovery.audit.queries import MAX_LIMIT
from recovery.core.message import parse_time
from recovery.ops.report import iso

_JOBS: Table = Job.__table__  # type: ignore[assignment]
STATUSES = tuple(status.value for status in JobStatus)
DEFAULT_LIMIT = 100


class SearchError(ValueError):
    """A search field is not valid; the message names it."""


@dataclass(frozen=True)
class JobQuery:
    job_id: str | None = None
    idempotency_key: str | None = None
    integration: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT


def time_field(form: Mapping[str, str], name: str, label: str) -> datetime | None:
    """The form's time field `name` (None when blank; UTC unless it names a zone); a bad one
    is a SearchError naming it by `label`."""
    text = (form.get(name) or "").strip()
    if not text:
        return None
    try:
        moment = parse_time(text)
    except (TypeError, ValueError):
        raise SearchError(f"{label} must be an ISO 8601 time such as 2026-05-01T12:00 "
                          f"(UTC unless it names a zone), got {text[:40]!r}.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(form: Mapping[str, str], name: str) -> str | None:
    return (form.get(name) or "").strip()[:255] or None


def parse_query(form: Mapping[str, str]) -> JobQuery:
    """The search a jobs page asks for; SearchError names a bad field."""
    status = _text(form, "status")
    if status is not None and status not in STATUSES:
        raise SearchError(f"Unknown job status {status[:20]!r}; use one of "
                          f"{', '.join(STATUSES)}.")
    query = JobQuery(job_id=_text(form, "job_id"),
                     idempotency_key=_text(form, "idempotency_key"),
                     integration=_text(form, "integration"), status=status,
                     since=time_field(form, "since", "From"),
                     until=time_field(form, "until", "Until"))
    if query.since and query.until and query.since > query.until:
        raise SearchError("From must not be later than Until.")
    return query


def search(engine: Engine, query: JobQuery) -> list[dict[str, Any]]:
    """Matching jobs, newest first (at most `query.limit`, never more than MAX_LIMIT)."""
    statement = select(_JOBS)
    for column, value in ((_JOBS.c.id, query.job_id),
                          (_JOBS.c.idempotency_key, query.idempotency_key),
                          (_JOBS.c.integration, query.integration),
                          (_JOBS.c.status, query.status)):
        if value is not None:
            statement = statement.where(column == value)
    if query.since is not None:
        statement = statement.where(_JOBS.c.first_seen_at >= query.since)
    if query.until is not None:
        statement = statement.where(_JOBS.c.first_seen_at <= query.until)
    statement = statement.order_by(_JOBS.c.first_seen_at.desc(), _JOBS.c.id.desc()).limit(
        max(1, min(query.limit, MAX_LIMIT)))
    with engine.connect() as conn:
        return [_row(row._mapping) for row in conn.execute(statement)]


def _row(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    row = {key: iso(value) if isinstance(value, datetime) else value
           for key, value in mapping.items()}
    row["attempt_count"] = row.pop("attempts")
    return row


def timeline(job: dict[str, Any]) -> list[dict[str, Any]]:
    """A job's attempts as timeline rows: offset from the first, bar position and width in
    percent of the whole span, and the run (1, then 2 after the first replay, ...): attempt
    numbers start again at 1 when a replayed job runs."""
    attempts = job.get("attempts") or []
    if not attempts:
        return []
    starts = [parse_time(row["started_at"]) for row in attempts]
    origin = starts[0]
    ends = [(start - origin).total_seconds() * 1000 + (row["duration_ms"] or 0)
            for start, row in zip(starts, attempts, strict=True)]
    span = max(max(ends), 1.0)
    rows, run, previous = [], 1, 0
    for start, row in zip(starts, attempts, strict=True):
        if row["number"] <= previous:
            run += 1
        previous = row["number"]
        offset = (start - origin).total_seconds() * 1000
        rows.append({**row, "run": run, "offset_ms": round(offset),
                     "left_pct": round(offset / span * 100, 2),
                     "width_pct": max(round((row["duration_ms"] or 0) / span * 100, 2), 0.5)})
    return rows
