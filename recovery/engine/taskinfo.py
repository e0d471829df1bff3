"""What the Celery task adapter needs around the engine: redacted reprs and the result line.

Final states are decided and written in `recovery.engine.outcome`.
"""

from __future__ import annotations

from recovery.core.message import JobSpec, Progress
from recovery.core.step import Step
from recovery.engine.producer import bounded_repr


def task_reprs(job: JobSpec, progress: Progress) -> dict[str, str]:
    """Redacted argument reprs: what Flower and the task events show instead of the real ones,
    bounded so that they cannot double the size of a large message."""
    return {"argsrepr": "()",
            "kwargsrepr": bounded_repr({"job": job.redacted(), "progress": progress.to_message()})}


def outcome_line(step: Step) -> str:
    """The task's return value: one short line for the worker log and Flower (results are not
    stored). A string, because Celery's safe repr of a dict costs more than the rest of the
    task's bookkeeping. A degraded job names the fallback that answered."""
    parts: list[str] = [step.status]
    if step.http_status is not None:
        parts.append(f"HTTP {step.http_status}")
    if step.fallback:
        parts.append(f"{step.fallback} fallback")
    elif step.strategy:
        parts.append(step.strategy)
    return ", ".join(parts)
