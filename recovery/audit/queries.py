"""Read the audit trail as JSON-ready dictionaries (for the CLI, reports and tests).

Times come back as ISO 8601 strings in UTC. In job dictionaries the ``attempts`` column is
renamed ``attempt_count``, because ``get_job`` uses ``attempts`` for the list of attempt rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Row, Table, select

from recovery.audit.models import Attempt, BreakerTransition, Job, JobStatus

MAX_LIMIT = 1000

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
_TRANSITIONS: Table = BreakerTransition.__table__  # type: ignore[assignment]


def get_job(engine: Engine, job_id: str) -> dict[str, Any] | None:
    """A job with its attempts (oldest first), or None if the audit trail has no such job."""
    with engine.connect() as conn:
        job = conn.execute(select(_JOBS).where(_JOBS.c.id == job_id)).first()
        if job is None:
            return None
        attempts = conn.execute(
            select(_ATTEMPTS)
            .where(_ATTEMPTS.c.job_id == job_id)
            .order_by(_ATTEMPTS.c.started_at, _ATTEMPTS.c.id)
        ).all()
    result = _job_dict(job)
    result["attempts"] = [_plain(row._mapping) for row in attempts]
    return result


def list_jobs(
    engine: Engine,
    *,
    status: str | None = None,
    integration: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Jobs newest first, optionally only those with ``status`` and/or of ``integration``."""
    _check_limit(limit)
    query = select(_JOBS)
    if status is not None:
        query = query.where(_JOBS.c.status == _job_status(status))
    if integration is not None:
        query = query.where(_JOBS.c.integration == integration)
    query = query.order_by(_JOBS.c.first_seen_at.desc(), _JOBS.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [_job_dict(row) for row in conn.execute(query)]


def list_transitions(
    engine: Engine, integration: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Circuit-breaker transitions newest first, optionally of one integration."""
    _check_limit(limit)
    query = select(_TRANSITIONS)
    if integration is not None:
        query = query.where(_TRANSITIONS.c.integration == integration)
    query = query.order_by(_TRANSITIONS.c.at.desc(), _TRANSITIONS.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [_plain(row._mapping) for row in conn.execute(query)]


def _job_dict(row: Row[Any]) -> dict[str, Any]:
    result = _plain(row._mapping)
    result["attempt_count"] = result.pop("attempts")
    return result


def _plain(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in mapping.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    return value


def _job_status(status: str) -> str:
    try:
        return JobStatus(status).value
    except ValueError:
        known = ", ".join(member.value for member in JobStatus)
        raise ValueError(f"Unknown job status {status!r}. Use one of: {known}.") from None


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"The limit must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}.")
