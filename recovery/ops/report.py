"""Error analytics over the audit trail (`recovery-cli report`, `recovery-cli monitor`).

Every figure is a SQLAlchemy core select that runs on PostgreSQL and SQLite alike: counts are
grouped in SQL; the 95th percentile (nearest rank, via `cume_dist`) and the failure/success
turns behind the time to recover (via `lag`) use window functions, which both support.

Definitions used throughout:
- a *call* is an attempt row of kind `call`; a *failed call* is one whose decision is not
  `done`. Calls are placed in the window by their `started_at`.
- a job's *error class* is the primary error category of a failed call (priority order of
  `recovery.core.errors.ErrorCategory`).
- jobs are placed in the window by `first_seen_at`.
- *time to recover* (per integration): from the first failed retryable call after a success
  (or the window's start) to the end of the next successful call of that integration.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Table,
    Text,
    and_,
    case,
    cast,
    func,
    or_,
    select,
)

from recovery.audit.models import Attempt, DeadLetter, Job
from recovery.audit.workflow_models import WorkflowRun
from recovery.core.errors import ErrorCategory
from recovery.core.redact import redact_text, redact_url
from recovery.dlq.timeargs import parse_since

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
_DEAD: Table = DeadLetter.__table__  # type: ignore[assignment]
_PRIORITY = [category.value for category in ErrorCategory]
MINUTE_BUCKETS_UP_TO = timedelta(hours=3)


@dataclass(frozen=True)
class Window:
    """The time span a report covers, optionally for one integration."""

    since: datetime
    until: datetime
    integration: str | None = None

    @property
    def span(self) -> timedelta:
        return self.until - self.since


def parse_window(since: str, integration: str | None = None,
                 now: datetime | None = None) -> Window:
    """A Window from `--since` (30m, 24h, 7d or an ISO time); ValueError with a sentence."""
    until = now or datetime.now(UTC)
    start = parse_since(since, until)
    if start >= until:
        raise ValueError(f"--since {since!r} is not in the past; give an age such as 24h or an "
                         "earlier ISO 8601 time.")
    if integration is not None and not integration.strip():
        raise ValueError("--integration must name an integration, such as primary-api.")
    return Window(start, until, integration)


def primary_class(categories: Iterable[str]) -> str:
    """The highest-priority category of a failure ("unknown" when there is none)."""
    known = [c for c in categories if c in _PRIORITY]
    return min(known, key=_PRIORITY.index) if known else ErrorCategory.UNKNOWN.value


def _calls(window: Window, *columns: Any) -> Select[Any]:
    """A select over the window's calls (attempts of kind `call`) joined to their jobs."""
    query = (select(*columns).select_from(_ATTEMPTS.join(_JOBS, _JOBS.c.id == _ATTEMPTS.c.job_id))
             .where(_ATTEMPTS.c.kind == "call", _ATTEMPTS.c.started_at >= window.since,
                    _ATTEMPTS.c.started_at <= window.until))
    if window.integration is not None:
        query = query.where(_JOBS.c.integration == window.integration)
    return query


def _jobs(window: Window, *columns: Any) -> Select[Any]:
    query = select(*columns).where(_JOBS.c.first_seen_at >= window.since,
                                   _JOBS.c.first_seen_at <= window.until)
    if window.integration is not None:
        query = query.where(_JOBS.c.integration == window.integration)
    return query


def _failed() -> ColumnElement[bool]:
    return _ATTEMPTS.c.decision != "done"


def attempts_by_integration(engine: Engine, window: Window) -> list[dict[str, Any]]:
    """Calls, failed calls and the failure rate per integration, busiest first."""
    failed = func.sum(case((_failed(), 1), else_=0))
    query = (_calls(window, _JOBS.c.integration, func.count().label("calls"),
                    failed.label("failures"), func.count(func.distinct(_JOBS.c.id)).label("jobs"))
             .group_by(_JOBS.c.integration).order_by(func.count().desc(), _JOBS.c.integration))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"integration": r.integration, "calls": int(r.calls), "failures": int(r.failures),
             "jobs": int(r.jobs), "failure_rate": round(int(r.failures) / int(r.calls), 4)}
            for r in rows]


def failures_by_class(engine: Engine, window: Window) -> list[dict[str, Any]]:
    """Failed calls per integration and error class, most first."""
    categories = cast(_ATTEMPTS.c.error_categories, Text)
    query = (_calls(window, _JOBS.c.integration, categories.label("categories"),
                    func.count().label("n"))
             .where(_failed()).group_by(_JOBS.c.integration, categories))
    counts: Counter[tuple[str, str]] = Counter()
    with engine.connect() as conn:
        for row in conn.execute(query):
            counts[(row.integration, primary_class(_categories(row.categories)))] += int(row.n)
    return [{"integration": integration, "error_class": error_class, "failures": n}
            for (integration, error_class), n in sorted(
                counts.items(), key=lambda item: (-item[1], item[0]))]


def _categories(text: str | None) -> list[str]:
    try:
        parsed = json.loads(text) if text else []
    except ValueError:
        return []
    return [str(item) for item in parsed] if isinstance(parsed, list) else []


def retry_success(engine: Engine, window: Window) -> list[dict[str, Any]]:
    """Per integration: jobs, how they ended, and how many succeeded only after a retry."""
    def count_if(condition: ColumnElement[bool]) -> Any:
        return func.sum(case((condition, 1), else_=0))

    status = _JOBS.c.status
    query = (_jobs(window, _JOBS.c.integration, func.count().label("jobs"),
                   count_if(status == "succeeded").label("succeeded"),
                   count_if(and_(status == "succeeded", _JOBS.c.attempts > 1)).label("retried"),
                   count_if(status == "degraded").label("degraded"),
                   count_if(status.in_(("dead", "failed"))).label("failed"))
             .group_by(_JOBS.c.integration).order_by(_JOBS.c.integration))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"integration": r.integration, "jobs": int(r.jobs), "succeeded": int(r.succeeded),
             "succeeded_first_try": int(r.succeeded) - int(r.retried),
             "succeeded_after_retry": int(r.retried), "degraded": int(r.degraded),
             "dead_or_failed": int(r.failed)} for r in rows]


def recovery_times(engine: Engine, window: Window) -> list[dict[str, Any]]:
    """Per integration: how long retryable failures lasted until the next successful call."""
    ok = case((_ATTEMPTS.c.decision == "done", 1), else_=0)
    order = (_ATTEMPTS.c.started_at, _ATTEMPTS.c.id)
    prev = func.lag(ok).over(partition_by=_JOBS.c.integration, order_by=order)
    turns = (_calls(window, _JOBS.c.integration, _ATTEMPTS.c.started_at, _ATTEMPTS.c.id,
                    _ATTEMPTS.c.duration_ms, ok.label("ok"), prev.label("prev"))
             .where(or_(_ATTEMPTS.c.decision == "done", _ATTEMPTS.c.retryable.is_(True)))
             .subquery())
    query = (select(turns).where(or_(turns.c.prev.is_(None), turns.c.ok != turns.c.prev))
             .order_by(turns.c.integration, turns.c.started_at, turns.c.id))
    spans: dict[str, list[float]] = defaultdict(list)
    failing_since: dict[str, datetime] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            if not row.ok:
                failing_since.setdefault(row.integration, row.started_at)
            elif row.integration in failing_since:
                began = failing_since.pop(row.integration)
                ended = row.started_at + timedelta(milliseconds=row.duration_ms or 0)
                spans[row.integration].append((ended - began).total_seconds() * 1000)
    names = sorted(set(spans) | set(failing_since))
    return [{"integration": name, "recoveries": len(spans[name]),
             "mean_ms": round(sum(spans[name]) / len(spans[name])) if spans[name] else None,
             "max_ms": round(max(spans[name])) if spans[name] else None,
             "failing_since": iso(failing_since.get(name))} for name in names]


def fallback_use(engine: Engine, window: Window) -> list[dict[str, Any]]:
    """Jobs served by each fallback, per integration."""
    query = (_jobs(window, _JOBS.c.integration, _JOBS.c.fallback_used, func.count().label("n"))
             .where(_JOBS.c.status == "degraded")
             .group_by(_JOBS.c.integration, _JOBS.c.fallback_used)
             .order_by(func.count().desc(), _JOBS.c.integration))
    with engine.connect() as conn:
        return [{"integration": r.integration, "fallback": r.fallback_used or "unknown",
                 "jobs": int(r.n)} for r in conn.execute(query)]


def dlq_state(engine: Engine, integration: str | None = None,
              now: datetime | None = None) -> dict[str, Any]:
    """Dead letters parked right now (whatever the window): how many and how old."""
    current = now or datetime.now(UTC)
    query = (select(_DEAD.c.integration, func.count().label("n"),
                    func.min(_DEAD.c.dead_at).label("oldest"))
             .where(_DEAD.c.state == "parked").group_by(_DEAD.c.integration)
             .order_by(_DEAD.c.integration))
    if integration is not None:
        query = query.where(_DEAD.c.integration == integration)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    per = [{"integration": r.integration, "parked": int(r.n), "oldest_dead_at": iso(r.oldest),
            "oldest_age_s": round((current - r.oldest).total_seconds())} for r in rows]
    oldest = min((r.oldest for r in rows), default=None)
    return {"parked": sum(int(r.n) for r in rows), "oldest_dead_at": iso(oldest),
            "oldest_age_s": round((current - oldest).total_seconds()) if oldest else None,
            "by_integration": per}


def slowest_endpoints(engine: Engine, window: Window, limit: int = 10) -> list[dict[str, Any]]:
    """Endpoints (integration, method, path) by 95th-percentile call duration, slowest first."""
    group = (_JOBS.c.integration, _JOBS.c.method, _JOBS.c.path)
    rank = func.cume_dist().over(partition_by=group, order_by=_ATTEMPTS.c.duration_ms)
    ranked = _calls(window, *group, _ATTEMPTS.c.duration_ms, rank.label("rank")).subquery()
    p95 = func.min(case((ranked.c.rank >= 0.95, ranked.c.duration_ms)))
    query = (select(ranked.c.integration, ranked.c.method, ranked.c.path,
                    func.count().label("calls"), p95.label("p95"),
                    func.max(ranked.c.duration_ms).label("max"))
             .group_by(ranked.c.integration, ranked.c.method, ranked.c.path)
             .order_by(p95.desc(), func.max(ranked.c.duration_ms).desc(), ranked.c.path)
             .limit(limit))
    with engine.connect() as conn:
        return [{"integration": r.integration, "method": r.method, "path": redact_url(r.path),
                 "calls": int(r.calls), "p95_ms": int(r.p95), "max_ms": int(r.max)}
                for r in conn.execute(query)]


def failures_over_time(engine: Engine, window: Window) -> dict[str, Any]:
    """Failed calls per minute (windows up to 3 h) or per hour, by error class."""
    unit = timedelta(minutes=1) if window.span <= MINUTE_BUCKETS_UP_TO else timedelta(hours=1)
    first = _floor(window.since, unit)
    count = int((window.until - first) / unit) + 1
    buckets: list[Counter[str]] = [Counter() for _ in range(count)]
    query = _calls(window, _ATTEMPTS.c.started_at,
                   cast(_ATTEMPTS.c.error_categories, Text).label("categories")).where(_failed())
    with engine.connect() as conn:
        for row in conn.execution_options(stream_results=True).execute(query):
            index = min(int((row.started_at - first) / unit), count - 1)
            buckets[index][primary_class(_categories(row.categories))] += 1
    return {"bucket": "minute" if unit == timedelta(minutes=1) else "hour",
            "buckets": [{"start": iso(first + unit * i), "failures": sum(c.values()),
                         "by_class": dict(sorted(c.items()))} for i, c in enumerate(buckets)]}


def _floor(moment: datetime, unit: timedelta) -> datetime:
    utc = moment.astimezone(UTC)
    if unit == timedelta(minutes=1):
        return utc.replace(second=0, microsecond=0)
    return utc.replace(minute=0, second=0, microsecond=0)


def recent_failures(engine: Engine, window: Window, limit: int = 10) -> list[dict[str, Any]]:
    """The latest failed calls, newest first."""
    query = (_calls(window, _ATTEMPTS.c.started_at, _JOBS.c.integration, _JOBS.c.method,
                    _JOBS.c.path, _ATTEMPTS.c.http_status, _ATTEMPTS.c.decision,
                    _ATTEMPTS.c.error_message)
             .where(_failed()).order_by(_ATTEMPTS.c.started_at.desc(), _ATTEMPTS.c.id.desc())
             .limit(limit))
    with engine.connect() as conn:
        return [{"at": iso(r.started_at), "integration": r.integration, "method": r.method,
                 "path": redact_url(r.path), "http_status": r.http_status,
                 "decision": r.decision, "error": _text(r.error_message)}
                for r in conn.execute(query)]


def _text(value: str | None) -> str | None:
    """Free text from the audit trail, scrubbed again: the writer redacts on the way in, but a
    report may be mailed around, and rows written by an older version may hold more."""
    return None if value is None else redact_text(value)


def build_report(engine: Engine, window: Window) -> dict[str, Any]:
    """Every section of the report as JSON-ready data."""
    attempts = attempts_by_integration(engine, window)
    retried = retry_success(engine, window)
    return {
        "window": {"since": iso(window.since), "until": iso(window.until),
                   "integration": window.integration},
        "totals": {"calls": sum(r["calls"] for r in attempts),
                   "failures": sum(r["failures"] for r in attempts),
                   "jobs": sum(r["jobs"] for r in retried),
                   "succeeded_after_retry": sum(r["succeeded_after_retry"] for r in retried)},
        "attempts": attempts,
        "failures_by_class": failures_by_class(engine, window),
        "retry_success": retried,
        "recovery": recovery_times(engine, window),
        "fallbacks": fallback_use(engine, window),
        "dlq": dlq_state(engine, window.integration, window.until),
        "slowest_endpoints": slowest_endpoints(engine, window),
        "failures_over_time": failures_over_time(engine, window),
        "workflow_runs": workflow_outcomes(engine, window),
    }


def workflow_outcomes(engine: Engine, window: Window) -> list[dict[str, Any]]:
    """Workflow runs started in the window, by workflow and status (their outcome so far)."""
    query = (select(WorkflowRun.workflow, WorkflowRun.status, func.count().label("n"))
             .where(WorkflowRun.created_at >= window.since,
                    WorkflowRun.created_at < window.until)
             .group_by(WorkflowRun.workflow, WorkflowRun.status)
             .order_by(WorkflowRun.workflow, WorkflowRun.status))
    with engine.connect() as conn:
        return [{"workflow": row.workflow, "status": row.status, "runs": int(row.n)}
                for row in conn.execute(query)]


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat()
