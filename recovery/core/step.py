"""`Step`: what one delivery of a job decided, handed from the pipeline to the outcome, the
task adapter and the dead-letter queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from recovery.core.errors import Classification
from recovery.core.message import Progress

StepStatus = Literal["succeeded", "degraded", "retry", "defer", "requeue", "dead", "failed",
                     "duplicate"]


@dataclass(frozen=True)
class Step:
    """What one delivery decided. `countdown_s` is set for retry, defer and requeue;
    `progress` is what the next delivery starts from."""

    status: StepStatus
    progress: Progress
    attempts: int  # real calls made so far; deferrals and duplicates make none
    countdown_s: float | None = None
    http_status: int | None = None
    body: Any = None
    strategy: str | None = None
    fallback: str | None = None
    failure: Classification | None = None
    reason: str = ""
    duplicate_of: str | None = None  # duplicate: the job whose success the key records
