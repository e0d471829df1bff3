"""`tasks.integration.call`: one integration call as a Celery job, a thin adapter to the engine."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject

from recovery.celery_app import app
from recovery.dlq.park import DeadLetterPublishError
from recovery.jobs import JobSpec, Progress
from recovery.observability import job_context
from recovery.pipeline import Step, run_job
from recovery.runtime import get_runtime
from recovery.worker import finish_unsuccessful, outcome_line, task_reprs


@app.task(bind=True, name="tasks.integration.call", max_retries=None, acks_late=True)
def call(self: Task, job: dict[str, Any], progress: dict[str, Any] | None = None) -> str:
    spec = JobSpec.from_message(job)
    state = Progress.from_message(progress)
    runtime = get_runtime()
    with job_context(spec, self.request.id, state.attempt):
        step: Step = run_job(spec, state, runtime)
        if step.status in ("retry", "defer"):
            raise self.retry(
                kwargs={"job": job, "progress": step.progress.to_message()},
                countdown=step.countdown_s,
                **task_reprs(spec, step.progress),
            )
        try:
            finish_unsuccessful(spec, step, runtime)
        except DeadLetterPublishError as exc:
            raise Reject(str(exc), requeue=True) from exc
        return outcome_line(step)
