"""`Outcome`: what a finished job (or workflow step) produced, as a producer reads it.

A plain JSON value: it is kept in the result store for RESULT_TTL, handed to the producer's
`on_success` / `on_failure` callback tasks, and printed by `recovery-cli jobs result`. It is
never written to the audit trail or to a log line (the body is the upstream's data).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

OutcomeStatus = Literal["succeeded", "degraded", "duplicate", "failed", "dead"]
OUTCOME_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "degraded", "duplicate", "failed", "dead"})
#: The statuses that count as success for callbacks and `Outcome.ok`.
SUCCESS_STATUSES: frozenset[str] = frozenset({"succeeded", "degraded", "duplicate"})
#: Bumped when a field changes meaning; readers refuse versions they do not know.
OUTCOME_VERSION = 1


class MalformedOutcomeError(ValueError):
    """Stored or received data that is not an outcome this version understands."""


@dataclass(frozen=True)
class Outcome:
    """The final outcome of one job.

    `body` is the parsed answer (JSON when the upstream sent JSON, else text) of a succeeded
    or degraded job; None for failed and dead jobs, and when it was too large to keep
    (`body_omitted` then says why). `fallback` names the fallback that served a degraded
    job; `strategy` the recovery strategy that decided the end; `error` the reason a job
    failed or was dead-lettered (redacted, like the audit trail's). `duplicate_of` is set
    for a duplicate: the job whose success it repeats (its result is returned when kept).
    """

    job_id: str
    status: OutcomeStatus
    integration: str = ""
    http_status: int | None = None
    body: Any = None
    body_omitted: str | None = None
    fallback: str | None = None
    strategy: str | None = None
    error: str | None = None
    error_category: str | None = None
    attempts: int = 0
    replay_count: int = 0
    duplicate_of: str | None = None
    finished_at: str = ""

    def __post_init__(self) -> None:
        if self.status not in OUTCOME_STATUSES:
            raise MalformedOutcomeError(
                f"{self.status!r} is not a final status; use one of "
                f"{', '.join(sorted(OUTCOME_STATUSES))}.")

    @property
    def ok(self) -> bool:
        """Whether the job ended in success (served by the upstream, a fallback, or earlier)."""
        return self.status in SUCCESS_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {"version": OUTCOME_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Outcome:
        if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
            raise MalformedOutcomeError("An outcome must be a JSON object with a job_id.")
        if data.get("version", OUTCOME_VERSION) != OUTCOME_VERSION:
            raise MalformedOutcomeError(
                f"Outcome version {data.get('version')!r} is not understood by this version "
                f"(it reads version {OUTCOME_VERSION}).")
        known = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**known)

    @classmethod
    def from_json(cls, text: str | bytes) -> Outcome:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MalformedOutcomeError(f"A stored outcome is not JSON ({exc}).") from exc
        return cls.from_dict(data)

    def without_body(self, why: str) -> Outcome:
        return replace(self, body=None, body_omitted=why)

    def finished_now(self) -> Outcome:
        return replace(self, finished_at=datetime.now(UTC).isoformat())
