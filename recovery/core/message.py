"""The job as it travels through the broker: what to call, and how far it has got.

A job message is two JSON objects: the immutable `JobSpec` (what the producer asked for) and the
`Progress` (attempts spent, time deferred), which changes on every Celery retry of the same job.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from recovery.core.redact import REDACTED, AuditPolicy, policy_for, redacted_request


class MalformedJobError(ValueError):
    """A message that does not carry a job this version understands."""


def utc_now_iso() -> str:
    """The current UTC time in ISO 8601, the format every stored time uses."""
    return datetime.now(UTC).isoformat()


def parse_time(value: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (naive or empty input counts as now/UTC)."""
    if not value:
        return datetime.now(UTC)
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def new_job_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, repr=False)
class JobSpec:
    """What a producer asked for; replays and redeliveries reuse it (only replay_count grows).

    Its repr is the redacted view, so a job that lands in a log line, an exception message or
    a Sentry frame never shows the values it carries for the upstream.
    """

    job_id: str
    integration: str
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    enqueued_at: str = ""
    replay_count: int = 0
    on_success: str | None = None  # Celery task names the outcome is sent to (engine.results)
    on_failure: str | None = None

    def to_message(self) -> dict[str, Any]:
        """The job as its message carries it. Built field by field, not with `asdict`, whose
        deep copy of the body was a sixth of an enqueue's CPU; the message is serialised at
        once, so it may share the body with the job (the containers are copied)."""
        return {"job_id": self.job_id, "integration": self.integration, "method": self.method,
                "path": self.path, "json": self.json,
                "params": None if self.params is None else dict(self.params),
                "headers": dict(self.headers), "idempotency_key": self.idempotency_key,
                "enqueued_at": self.enqueued_at, "replay_count": self.replay_count,
                "on_success": self.on_success, "on_failure": self.on_failure}

    @classmethod
    def from_message(cls, data: Any) -> JobSpec:
        if not isinstance(data, dict):
            raise MalformedJobError(f"A job must be a JSON object, got {type(data).__name__}.")
        required = ("job_id", "integration", "method", "path", "idempotency_key")
        missing = [name for name in required if not isinstance(data.get(name), str)]
        if missing:
            raise MalformedJobError(f"The job message lacks {', '.join(missing)}.")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    def redacted(self, policy: AuditPolicy | None = None) -> dict[str, Any]:
        """The job as logs, Flower, Sentry and the DLQ listing show it: header and parameter
        names, no body but its summary, and only the values the integration's `audit:` block
        (`policy`, by default looked up in the registry) allows."""
        shown = redacted_request(self.method, self.path, self.params, self.headers, self.json,
                                 policy_for(self.integration) if policy is None else policy)
        return {"job_id": self.job_id, "integration": self.integration, **shown,
                "idempotency_key": self.idempotency_key, "replay_count": self.replay_count}

    def __repr__(self) -> str:
        return f"JobSpec({self.redacted()!r})"

    def replayed(self) -> JobSpec:
        return replace(self, replay_count=self.replay_count + 1)


_JOB_KEYS = frozenset({"job_id", "integration", "method", "path"})


def job_message_view(data: Mapping[Any, Any]) -> Any:
    """A job message met in free-form data (a task's arguments in a Sentry event, a log
    field) as its redacted display; "[REDACTED]" if it is malformed; None if `data` does not
    carry a job's identity. Used as the `view` of `recovery.core.redact.scrub_data`."""
    if not data.keys() >= _JOB_KEYS:
        return None
    try:
        return JobSpec.from_message(dict(data)).redacted()
    except (MalformedJobError, TypeError, ValueError):
        return REDACTED


@dataclass(frozen=True)
class Progress:
    """How far a job has got across its Celery retries.

    `attempt` is the number of the next real call (1-based); deferrals do not spend it.
    `blocked_s` is the total time the job has spent deferred by a breaker, limiter or budget.
    `budget_pending` marks a retry the retry budget has not charged yet: it is charged before
    the call, and deferred again while the budget has no room.
    `requeues` counts this delivery's returns to the queue after infrastructure errors
    (`recovery.engine.outcome`); the next attempt or deferral starts again from zero.
    """

    attempt: int = 1
    deferrals: int = 0
    blocked_s: float = 0.0
    auth_refreshed: bool = False
    recovered_by: str | None = None
    budget_pending: bool = False
    requeues: int = 0

    def to_message(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "deferrals": self.deferrals,
                "blocked_s": self.blocked_s, "auth_refreshed": self.auth_refreshed,
                "recovered_by": self.recovered_by, "budget_pending": self.budget_pending,
                "requeues": self.requeues}

    @classmethod
    def from_message(cls, data: Any) -> Progress:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise MalformedJobError("The job's progress must be a JSON object.")
        return cls(
            attempt=int(data.get("attempt", 1)),
            deferrals=int(data.get("deferrals", 0)),
            blocked_s=float(data.get("blocked_s", 0.0)),
            auth_refreshed=bool(data.get("auth_refreshed", False)),
            recovered_by=data.get("recovered_by"),
            budget_pending=bool(data.get("budget_pending", False)),
            requeues=int(data.get("requeues", 0)),
        )

    def next_attempt(self) -> Progress:
        return replace(self, attempt=self.attempt + 1, auth_refreshed=False, requeues=0)

    def deferred(self, seconds: float) -> Progress:
        return replace(self, deferrals=self.deferrals + 1, blocked_s=self.blocked_s + seconds,
                       requeues=0)


#: The Celery task that runs a job (`tasks.integration.call`).
TASK_NAME = "tasks.integration.call"
#: Flower and the task events show the redacted arguments cut to this many characters, so the
#: copy in each message's headers stays small however large the job is.
MAX_REPR_CHARS = 4096


def bounded_repr(value: Any, limit: int = MAX_REPR_CHARS) -> str:
    """`repr(value)` cut to `limit` characters plus a marker saying how many were left out."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters not shown]"


def task_reprs(job: JobSpec, progress: Progress) -> dict[str, str]:
    """Redacted argument reprs: what Flower and the task events show instead of the real ones,
    bounded so that they cannot double the size of a large message."""
    return {"argsrepr": "()",
            "kwargsrepr": bounded_repr({"job": job.redacted(), "progress": progress.to_message()})}
