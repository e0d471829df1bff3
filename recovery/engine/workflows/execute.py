"""Running one step of a workflow run.

* `api_call`: a job built and validated like `recovery.enqueue` does (`build_job`), run by the
  same `run_job` as `tasks.integration.call`: idempotency claim, rate limit, breaker, retries,
  fallbacks and the audit trail. Its idempotency key is `wf-{run}-{step}`, so a replayed step
  sends the key the upstream already saw. A delivery that finds the key already succeeded (the
  worker died after the call, before the outcome was recorded) ends `duplicate` without the
  body, which this system does not keep. A retry or deferral is handed back to the task (a
  Celery retry of the step); a job that fails for good ends `failed` in the audit trail and its
  run, not the job, is dead-lettered.
* `validation` / `transformation`: a pure callable given the resolved `inputs`, under the
  step's `timeout_ms` (it runs in a helper thread; one that overruns is abandoned, not
  killed, so keep them pure). A validation fails when it raises or returns False; a
  transformation's return value (JSON) is its output.
* `persistence`: a callable that writes, called with the inputs and the idempotency key
  `{run}:{step}`. The key is claimed in the step's row before the call, so it runs at most
  once per run: a call that raised (it reports that it did not write) releases the claim for
  a replay; one that timed out or whose worker died keeps it, and the step is never run again.
"""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from structlog.contextvars import bound_contextvars

from recovery.config.workflows import WorkflowStep, import_callable
from recovery.core.message import JobSpec, Progress
from recovery.core.redact import policy_for, redact_params
from recovery.core.request import EnqueueError, build_job
from recovery.engine.outcome import Step, after_exception, conclude, describe
from recovery.engine.pipeline import run_job
from recovery.engine.runtime import Runtime
from recovery.engine.workflows import store
from recovery.engine.workflows.keys import step_key
from recovery.engine.workflows.refs import UnresolvedReference, resolve
from recovery.engine.workflows.store import StepOutcome, StepStart


class StepTimeout(Exception):
    """The callable did not return within the step's timeout."""


@dataclass(frozen=True)
class Again:
    """The step's api_call asks for another delivery after `countdown_s`."""

    countdown_s: float
    progress: Progress


def failed(error: str, attempts: int = 0) -> StepOutcome:
    return StepOutcome("failed", error=error, attempts=attempts)


def run_step(rt: Runtime, run_id: str, step: WorkflowStep, start: StepStart,
             progress: Progress | None) -> StepOutcome | Again:
    context = {"input": start.input, "steps": dict(start.outputs)}
    try:
        config = resolve(dict(step.config), context)
    except UnresolvedReference as exc:
        return failed(f"Step {step.id!r} did not run: {exc}")
    if step.type == "api_call":
        return _api_call(rt, run_id, step, config, start, progress)
    try:
        target = import_callable(config["callable"])
    except ImportError as exc:
        return failed(f"Step {step.id!r} did not run: its callable cannot be imported ({exc}).")
    inputs = config.get("inputs")
    if step.type == "persistence":
        return _persist(rt, run_id, step, target, inputs)
    return _pure(step, target, inputs)


def _api_call(rt: Runtime, run_id: str, step: WorkflowStep, config: dict[str, Any],
              start: StepStart, progress: Progress | None) -> StepOutcome | Again:
    try:
        job = build_job(rt.registry, config["integration"], config["method"], config["path"],
                        json=config.get("json"), params=config.get("params"),
                        headers=config.get("headers"),
                        idempotency_key=step_key(run_id, step.id),
                        max_request_bytes=rt.settings.max_request_bytes)
    except EnqueueError as exc:
        return failed(f"Step {step.id!r} did not run: its request was refused: {exc}")
    job = replace(job, job_id=start.job_id or str(uuid.uuid4()),
                  replay_count=start.replay_count)
    state = progress or Progress()
    if start.job_id is None:
        store.set_step_fields(rt.engine, run_id, step.id, job_id=job.job_id)
        rt.audit.job_queued(job.job_id, job.integration, job.method, job.path,
                            redact_params(job.params or {}, policy_for(job.integration)),
                            job.idempotency_key)
    with bound_contextvars(job_id=job.job_id, integration=job.integration,
                           attempt=state.attempt):  # every log line of the call names the job
        try:
            result = run_job(job, state, rt)
        except Exception as exc:  # the same rule as the task adapter: requeue or give up
            result = after_exception(job, state, rt, exc)
    if result.status in ("retry", "defer", "requeue"):
        return Again(result.countdown_s or 0.0, result.progress)
    if result.status in ("succeeded", "degraded", "duplicate"):
        output = {"status": result.status, "http_status": result.http_status,
                  "body": result.body, "fallback": result.fallback}
        return StepOutcome("succeeded", output=output, attempts=result.attempts)
    return _job_gave_up(rt, job, result)


def _job_gave_up(rt: Runtime, job: JobSpec, result: Step) -> StepOutcome:
    """The job is recorded `failed` (its run is what gets dead-lettered and replayed)."""
    conclude(job, replace(result, status="failed"), rt)
    return failed(f"The call failed for good after {result.attempts} attempt(s): "
                  f"{result.reason}", result.attempts)


def _call_with_timeout(target: Any, timeout_s: float, *args: Any) -> Any:
    future: Future[Any] = Future()

    def work() -> None:
        try:
            future.set_result(target(*args))
        except BaseException as exc:  # handed to the waiting thread
            future.set_exception(exc)

    threading.Thread(target=work, name="workflow-step", daemon=True).start()
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError:
        raise StepTimeout(f"it did not return within {int(timeout_s * 1000)} ms") from None


def _pure(step: WorkflowStep, target: Any, inputs: Any) -> StepOutcome:
    try:
        value = _call_with_timeout(target, step.timeout_ms / 1000, inputs)
    except StepTimeout as exc:
        return failed(f"Step {step.id!r} failed: {exc}.", 1)
    except Exception as exc:
        return failed(f"Step {step.id!r} failed: {describe(exc)}", 1)
    if step.type == "validation":
        if value is False:
            return failed(f"Step {step.id!r} failed: the validation returned false.", 1)
        value = {"valid": True} if value in (None, True) else value
    return _json_outcome(step, value)


def _json_outcome(step: WorkflowStep, value: Any) -> StepOutcome:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return failed(f"Step {step.id!r} failed: its result is not JSON ({exc}); return "
                      "plain JSON values.", 1)
    return StepOutcome("succeeded", output=value, attempts=1)


def _persist(rt: Runtime, run_id: str, step: WorkflowStep, target: Any,
             inputs: Any) -> StepOutcome:
    key = f"{run_id}:{step.id}"
    if not store.take_claim(rt.engine, run_id, step.id, key):
        return failed(f"Step {step.id!r} did not run: its write (idempotency key {key}) was "
                      "already started once and its outcome is unknown, so it is not run "
                      "again; check the target for that key.")
    try:
        value = _call_with_timeout(target, step.timeout_ms / 1000, inputs, key)
    except StepTimeout as exc:
        return failed(f"Step {step.id!r} failed: {exc}; it may still write, so it will not "
                      f"run again under key {key}.", 1)
    except Exception as exc:
        store.set_step_fields(rt.engine, run_id, step.id, claim=None)
        return failed(f"Step {step.id!r} failed: {describe(exc)}", 1)
    return _json_outcome(step, {"persisted": True} if value is None else value)
