"""What an operator can do from the console, each written to the audit trail with who and what.

The work itself is done by the functions the CLI calls (`recovery.ops.steering` for breakers
and rate-limit pauses, `replay_dlq`, `purge`), so the console writes the same `alerts` rows as
`recovery-cli breaker open|close` and `ratelimit resume`, with the operator in the details.
Replay and purge also record their outcome as a `console_dlq_replay` / `console_dlq_purge`
alert, besides the `replayed by` / `purged by` reason they leave on each dead letter.
"""

from __future__ import annotations

from typing import Any

import structlog

from recovery.core.message import JobSpec
from recovery.dlq.purge import PurgeReport, purge, release
from recovery.dlq.replay import ReplayOptions, ReplayReport, replay_dlq
from recovery.engine.runtime import Runtime
from recovery.ops import steering
from recovery.ops.console.config import User
from recovery.ops.console.dlqview import ConsoleFilter

log = structlog.get_logger(__name__)

def actor(user: User) -> str:
    """How the console names an operator in the audit trail and DLQ lock."""
    return f"console:{user.name}"


def _who(user: User) -> dict[str, Any]:
    return {"actor": user.name, "role": user.role, "via": "console"}


def _log_action(kind: str, integration: str | None, user: User, message: str) -> None:
    log.warning("console_action", kind=kind, integration=integration, actor=user.name,
                message=message)


def record(rt: Runtime, user: User, kind: str, integration: str | None, message: str,
           details: dict[str, Any] | None = None) -> None:
    """One `alerts` row and one log line for an operator action."""
    rt.audit.alert(kind, integration, message, {**_who(user), **(details or {})})
    _log_action(kind, integration, user, message)


def steer_breaker(rt: Runtime, user: User, integration_id: str, action: str,
                  reason: str | None) -> str:
    """Open or close a breaker by hand; returns its state afterwards."""
    why = reason or f"operator {action} from the console by {user.name}"
    state = steering.steer_breaker(rt, integration_id, action, why, _who(user))
    _log_action(f"breaker_manual_{action}", integration_id, user, why)
    return state


def resume_rate_limit(rt: Runtime, user: User, integration_id: str,
                      reason: str | None) -> float:
    """Lift an integration's rate-limit pause; returns the seconds that were left."""
    why = reason or f"operator resume from the console by {user.name}"
    left = steering.resume_rate_limit(rt, integration_id, why, _who(user))
    _log_action("ratelimit_manual_resume", integration_id, user, why)
    return left


def replay(rt: Runtime, user: User, flt: ConsoleFilter, *, limit: int | None,
           rate: float | None, dry_run: bool) -> ReplayReport:
    """`replay-dlq` with these filters; a real run is audited with its counts."""
    options = ReplayOptions(filter=flt, limit=limit, rate=rate, dry_run=dry_run,
                            actor=actor(user))
    report = replay_dlq(rt, options)
    if not dry_run:
        summary = report.summary()
        record(rt, user, "console_dlq_replay", flt.integration,
               f"{user.name} replayed {summary['replayed']} dead letters, quarantined "
               f"{summary['quarantined']}, skipped {summary['skipped']}, failed "
               f"{summary['failed']}.",
               {"filter": flt.describe(), "limit": limit, "rate": rate,
                "job_ids": [item.job_id for item in report.items if item.action == "replay"]})
    return report


def purge_selected(rt: Runtime, user: User, job_ids: list[str]) -> PurgeReport:
    """Delete the selected dead letters for good (never an entry that was not selected)."""
    if not job_ids:
        raise ValueError("Select at least one dead letter to purge.")
    report = purge(rt, ConsoleFilter(job_ids=frozenset(job_ids)), actor=actor(user))
    record(rt, user, "console_dlq_purge", None,
           f"{user.name} purged {report.purged} dead letters.",
           {"job_ids": report.job_ids, "selected": sorted(job_ids)})
    return report


def release_quarantined(rt: Runtime, user: User, job_id: str) -> JobSpec:
    """`dlq quarantine release`: the job goes back to its work queue once more (audited).

    Raises ReleaseError with a sentence when the entry is missing or cannot be replayed.
    """
    job = release(rt, job_id, actor=actor(user))
    record(rt, user, "console_dlq_release", job.integration,
           f"{user.name} released job {job.job_id} from quarantine.",
           {"job_id": job.job_id, "replay_count": job.replay_count})
    return job
