"""The overview: `recovery-cli monitor`'s frame plus per-minute series of the last hour.

Series come from the audit trail: calls (attempts of kind `call`), failures by error class (the
report's `failures_over_time`), retries (decision `retry`), fallbacks (attempts of kind
`fallback`) and dead letters (decision `dead_letter`). A database that cannot be read leaves
the series empty with the reason, like the monitor does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup
from sqlalchemy import Table, select
from sqlalchemy.exc import SQLAlchemyError

from recovery.audit.models import Attempt
from recovery.engine.runtime import Runtime
from recovery.ops import monitor
from recovery.ops.console import charts
from recovery.ops.report import Window, failures_over_time

_ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
BUCKETS = 60
SERIES = ("calls", "retries", "fallbacks", "dead_letters")


def _first_bucket(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(second=0, microsecond=0) - MINUTE * (BUCKETS - 1)


def attempt_series(rt: Runtime, now: datetime) -> dict[str, list[int]]:
    """Calls, retries, fallbacks and dead letters per minute, oldest minute first."""
    first = _first_bucket(now)
    counts = {name: [0] * BUCKETS for name in SERIES}
    query = (select(_ATTEMPTS.c.started_at, _ATTEMPTS.c.kind, _ATTEMPTS.c.decision)
             .where(_ATTEMPTS.c.started_at >= first, _ATTEMPTS.c.started_at <= now))
    with rt.engine.connect() as conn:
        for row in conn.execute(query):
            index = min(int((row.started_at - first) / MINUTE), BUCKETS - 1)
            if row.kind == "call":
                counts["calls"][index] += 1
            if row.kind == "fallback":
                counts["fallbacks"][index] += 1
            if row.decision == "retry":
                counts["retries"][index] += 1
            if row.decision == "dead_letter":
                counts["dead_letters"][index] += 1
    return counts


def failure_series(rt: Runtime, now: datetime) -> dict[str, list[int]]:
    """Failed calls per minute and error class, on the same 60 buckets."""
    first = _first_bucket(now)
    report = failures_over_time(rt.engine, Window(first, now))
    by_class: dict[str, list[int]] = {}
    for index, bucket in enumerate(report["buckets"][:BUCKETS]):
        for name, count in bucket["by_class"].items():
            by_class.setdefault(name, [0] * BUCKETS)[index] = int(count)
    return dict(sorted(by_class.items()))


def snapshot(rt: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """Everything the overview shows, JSON-ready (the refresh endpoint returns it)."""
    at = now or datetime.now(UTC)
    frame = monitor.collect(rt, now=at).to_dict()
    data: dict[str, Any] = {"frame": frame, "series": {}, "failures_by_class": {},
                            "series_error": None, "start": _first_bucket(at).isoformat()}
    try:
        data["series"] = attempt_series(rt, at)
        data["failures_by_class"] = failure_series(rt, at)
    except SQLAlchemyError as exc:
        data["series_error"] = str(exc).splitlines()[0][:200] if str(exc) else "unavailable"
    data["charts"] = render_charts(data)
    return data


def render_charts(data: dict[str, Any]) -> dict[str, Markup]:
    """Each series as inline SVG markup, keyed by series name."""
    shown = {name: charts.bars(values, label=name.replace("_", " "))
             for name, values in data["series"].items()}
    if data["failures_by_class"]:
        shown["failures"] = charts.stacked(data["failures_by_class"], label="failures by class")
    elif data["series"]:
        shown["failures"] = charts.bars([0] * BUCKETS, label="failures by class")
    return shown
