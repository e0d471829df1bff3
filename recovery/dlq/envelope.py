"""The dead-letter envelope: everything needed to understand and replay a job, and no secrets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from recovery.jobs import JobSpec, MalformedJobError
from recovery.redact import policy_for, redact_body, redact_headers, redact_params

ENVELOPE_KIND = "api-recovery.dead-letter/1"
TASK_NAME = "tasks.integration.call"
_OPTIONAL = frozenset({"on_success", "on_failure"})  # absent from older envelopes


@dataclass(frozen=True)
class Envelope:
    job_id: str
    task_name: str
    integration: str
    method: str
    path: str
    body: Any
    params: dict[str, Any]
    headers: dict[str, str]
    idempotency_key: str
    error_categories: list[str]
    last_status: int | None
    message: str
    attempts: int
    first_enqueued_at: str
    dead_at: str
    replay_count: int
    kind: str = field(default=ENVELOPE_KIND)
    on_success: str | None = None  # the job's callbacks (`recovery.engine.results`)
    on_failure: str | None = None

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, data: Any) -> Envelope:
        if not isinstance(data, dict) or data.get("kind") != ENVELOPE_KIND:
            raise MalformedJobError("The message is not a dead-letter envelope of this system.")
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__
                          if name in data or name not in _OPTIONAL})
        except KeyError as exc:
            raise MalformedJobError(f"The envelope lacks the field {exc.args[0]!r}.") from exc

    def job(self) -> JobSpec:
        """The original job, ready to re-enqueue; credentials come back from the integration."""
        return JobSpec(job_id=self.job_id, integration=self.integration, method=self.method,
                       path=self.path, params=self.params or None,
                       json=({k: v for k, v in self.body.items() if k != "[REDACTED]"}
                             if isinstance(self.body, dict) else self.body),
                       headers={k: v for k, v in self.headers.items() if "[REDACTED]" not in v},
                       idempotency_key=self.idempotency_key, enqueued_at=self.first_enqueued_at,
                       replay_count=self.replay_count, on_success=self.on_success,
                       on_failure=self.on_failure)


def envelope_for(job: JobSpec, *, categories: list[str], last_status: int | None, message: str,
                 attempts: int, dead_at: str) -> Envelope:
    shown = policy_for(job.integration)
    return Envelope(
        job_id=job.job_id, task_name=TASK_NAME, integration=job.integration, method=job.method,
        path=job.path, body=redact_body(job.json, shown),
        params=redact_params(job.params or {}, shown),
        headers=redact_headers(job.headers, shown), idempotency_key=job.idempotency_key,
        error_categories=categories, last_status=last_status, message=message,
        attempts=attempts, first_enqueued_at=job.enqueued_at, dead_at=dead_at,
        replay_count=job.replay_count, on_success=job.on_success, on_failure=job.on_failure)
