"""`recovery-cli monitor`: one frame of the live operator view, collected and rendered.

A frame holds the breaker of every integration (the shared state, as every worker sees it),
the depth of the broker queues (Redis lists under the key prefix), and the last five minutes of
the audit trail: calls, failures and throughput per integration, and the latest failures.
A part that cannot be read (Redis or the database down) is shown as unavailable with the
reason; the rest of the frame is still drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import SQLAlchemyError

from recovery.config.broker import all_queue_depths
from recovery.config.queues import ALL_QUEUES
from recovery.engine.runtime import Runtime
from recovery.ops.report import Window, attempts_by_integration, recent_failures

#: The broker queues shown: recovery.celery_base's work, maintenance, dlq and quarantine queues.
QUEUES = ALL_QUEUES
WINDOW = timedelta(minutes=5)
RECENT = 8
MESSAGE_CHARS = 70


@dataclass
class Frame:
    at: datetime
    window_s: int
    breakers: list[dict[str, Any]] = field(default_factory=list)
    queues: dict[str, int] = field(default_factory=dict)
    queues_error: str | None = None
    activity: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    audit_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "window_s": self.window_s, "breakers": self.breakers,
                "queues": self.queues, "queues_error": self.queues_error,
                "activity": self.activity, "failures": self.failures,
                "audit_error": self.audit_error}


def collect(rt: Runtime, now: datetime | None = None, window: timedelta = WINDOW) -> Frame:
    """Read one frame; failures to reach Redis or the database are noted, not raised."""
    at = now or datetime.now(UTC)
    frame = Frame(at=at, window_s=int(window.total_seconds()))
    frame.breakers = [_breaker_row(rt, integration) for integration in rt.registry]
    _read_queues(rt, frame)
    _read_audit(rt, frame, Window(at - window, at))
    return frame


def _breaker_row(rt: Runtime, integration: Any) -> dict[str, Any]:
    try:
        snap = rt.breaker(integration).snapshot()
    except redis.RedisError as exc:
        return {"integration": integration.id, "state": "unknown", "error": _short(exc)}
    return {"integration": integration.id, "state": snap.state,
            "consecutive_failures": snap.consecutive_failures,
            "window_calls": snap.window_calls, "window_failures": snap.window_failures,
            "time_to_half_open_s": snap.time_to_half_open_s, "backend": snap.backend}


def _read_queues(rt: Runtime, frame: Frame) -> None:
    if rt.redis is None:
        frame.queues_error = "no Redis client in this process (embedded mode)"
        return
    try:
        depths = all_queue_depths(rt.settings, rt.redis)
    except (redis.RedisError, KombuOperationalError, OSError) as exc:
        frame.queues_error = _short(exc)
        return
    frame.queues = {queue: depths[queue] for queue in QUEUES}


def _read_audit(rt: Runtime, frame: Frame, window: Window) -> None:
    minutes = max(window.span.total_seconds() / 60, 1e-9)
    try:
        rows = attempts_by_integration(rt.engine, window)
        frame.failures = recent_failures(rt.engine, window, RECENT)
    except SQLAlchemyError as exc:
        frame.audit_error = _short(exc)
        return
    frame.activity = [{**row, "calls_per_min": round(row["calls"] / minutes, 2)} for row in rows]


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def render(frame: Frame) -> str:
    """The frame as plain text for a terminal."""
    lines = [f"recovery monitor  {frame.at.strftime('%Y-%m-%d %H:%M:%S')} UTC  "
             "(Ctrl+C to stop)", "", "Breakers"]
    for row in frame.breakers:
        wait = row.get("time_to_half_open_s")
        extra = f"  half-open in {wait:.1f} s" if wait else ""
        local = "  (this process only: Redis unreachable)" if row.get("backend") == "local" else ""
        detail = (f"  error: {row['error']}" if "error" in row else
                  f"  failures in a row: {row['consecutive_failures']}{extra}{local}")
        lines.append(f"  {row['integration']:<24} {row['state']:<10}{detail}")
    if not frame.breakers:
        lines.append("  (no integrations are configured)")
    lines += ["", "Queues"]
    if frame.queues_error:
        lines.append(f"  unavailable: {frame.queues_error}")
    else:
        lines.append("  " + "   ".join(f"{name}: {depth}" for name, depth in frame.queues.items()))
    lines += ["", f"Last {frame.window_s // 60} minutes (audit trail)"]
    if frame.audit_error:
        lines.append(f"  unavailable: {frame.audit_error}")
        return "\n".join(lines)
    for row in frame.activity:
        lines.append(f"  {row['integration']:<24} calls {row['calls']:>5}  failures "
                     f"{row['failures']:>5}  ({row['failure_rate']:.0%})  "
                     f"{row['calls_per_min']:.1f}/min")
    if not frame.activity:
        lines.append("  no calls")
    lines += ["", "Recent failures"]
    for row in frame.failures:
        message = (row["error"] or "")[:MESSAGE_CHARS]
        lines.append(f"  {row['at'][11:19]}  {row['integration']:<24} {row['method']} "
                     f"{row['path'][:30]}  {row['decision']}  {message}")
    if not frame.failures:
        lines.append("  none")
    return "\n".join(lines)
