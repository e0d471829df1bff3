"""One resilient call in this process, without a worker (`recovery-cli test`, the demo).

The same pipeline as a Celery job; between steps the `backoff` library sleeps for exactly the
countdown the policy chose, instead of a broker holding the job.
"""

from __future__ import annotations

from collections.abc import Callable

import backoff

from recovery.core.message import JobSpec, Progress
from recovery.core.step import Step
from recovery.engine.pipeline import run_job
from recovery.engine.runtime import Runtime

WAITING = frozenset({"retry", "defer"})


def run_synchronously(job: JobSpec, rt: Runtime,
                      on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Run a job to its final step; returns every step taken, the final one last."""
    steps: list[Step] = []

    def countdown(step: Step) -> float:
        return step.countdown_s or 0.0

    @backoff.on_predicate(backoff.runtime, predicate=lambda step: step.status in WAITING,
                          value=countdown, jitter=None, logger=None)
    def next_step() -> Step:
        progress = steps[-1].progress if steps else Progress()
        step = run_job(job, progress, rt)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        return step

    next_step()
    return steps
