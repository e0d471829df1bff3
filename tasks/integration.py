"""`tasks.integration.call`: one integration call as a Celery job, a thin adapter to the engine.

No delivery ends silently (`recovery.engine.outcome`): whatever the engine raises becomes a requeue
(infrastructure errors, bounded) or a dead letter; dead and failed jobs end as Celery FAILURE
after they are parked or marked failed, everything else as SUCCESS with a one-line result.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject

from recovery.celery_app import app
from recovery.config.broker import delivery_countdown
from recovery.config.settings import get_settings
from recovery.core.message import JobSpec, Progress, task_reprs
from recovery.dlq.park import DeadLetterPublishError
from recovery.engine.outcome import (
    JobDeadLettered,
    JobFailed,
    Step,
    after_exception,
    celery_failure,
    conclude,
    outcome_line,
)
from recovery.engine.pipeline import run_job
from recovery.engine.runtime import get_runtime
from recovery.telemetry.logging import job_context


@app.task(bind=True, name="tasks.integration.call", max_retries=None, acks_late=True,
          throws=(JobDeadLettered, JobFailed))
def call(self: Task, job: dict[str, Any], progress: dict[str, Any] | None = None) -> str:
    spec = JobSpec.from_message(job)
    state = Progress.from_message(progress)
    runtime = get_runtime()
    with job_context(spec, self.request.id, state.attempt):
        try:
            step: Step = run_job(spec, state, runtime)
        except Exception as exc:  # every exception ends in a requeue or a dead letter
            step = after_exception(spec, state, runtime, exc)
        if step.status in ("retry", "defer", "requeue"):
            raise _again(self, job, spec, step)
        try:
            conclude(spec, step, runtime)
        except DeadLetterPublishError as exc:
            raise Reject(str(exc), requeue=True) from None
        line = outcome_line(step)
        failure = celery_failure(step, line)
        if failure is not None:
            raise failure from None  # recorded as FAILURE, acked, never retried
        return line


def _again(task: Task, job: dict[str, Any], spec: JobSpec, step: Step) -> Exception:
    """The same job again after `step.countdown_s`, with its new progress. If the broker does
    not take the new message, Celery would drop this one (a Reject without requeue): it goes
    back to the queue instead, unchanged, and runs again."""
    try:
        return task.retry(kwargs={"job": job, "progress": step.progress.to_message()},
                          countdown=delivery_countdown(get_settings(), step.countdown_s),
                          throw=False,
                          **task_reprs(spec, step.progress))
    except Reject as exc:
        return Reject(f"The broker did not take the job's next delivery ({exc.reason!r}); "
                      "the job goes back to its queue.", requeue=True)
