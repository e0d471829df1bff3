"""Workflow runs as the console shows them: a filtered, paged list and one run with its steps.

A run is shown through `shown_run`, the function behind `recovery-cli workflow show --json`,
so the console shows exactly what the CLI shows and never a run's input or a step's output.
Each step row adds what the run alone does not say: the integration an api_call step calls
(from the workflow definition), the error classes of its job's last failed attempt (from the
audit trail), the status of its undo step, and its bar on the run's time line.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from recovery.audit.models import Attempt
from recovery.audit.workflow_models import RunStatus
from recovery.config.workflows import Workflow, WorkflowError
from recovery.core.message import parse_time
from recovery.engine.runtime import Runtime
from recovery.engine.workflows.keys import step_of_key
from recovery.engine.workflows.runs import WorkflowInputError, get_workflow, workflows
from recovery.engine.workflows.store import RunFilter, count_runs, find_step, get_run, list_runs
from recovery.engine.workflows.view import shown_run, step_integration
from recovery.ops.console.dlqview import Page
from recovery.ops.console.jobsearch import SearchError, time_field

STATUSES = tuple(status.value for status in RunStatus)
PAGE_SIZE = 25
NAME_CHARS = 128


def parse_filter(form: Mapping[str, str]) -> RunFilter:
    """The runs a list page asks for; SearchError names a bad field."""
    status = (form.get("status") or "").strip() or None
    if status is not None and status not in STATUSES:
        raise SearchError(f"Unknown run status {status[:20]!r}; use one of "
                          f"{', '.join(STATUSES)}.")
    flt = RunFilter(status=status,
                    workflow=(form.get("workflow") or "").strip()[:NAME_CHARS] or None,
                    since=time_field(form, "since", "From"),
                    until=time_field(form, "until", "Until"))
    if flt.since and flt.until and flt.since > flt.until:
        raise SearchError("From must not be later than Until.")
    return flt


def list_page(rt: Runtime, flt: RunFilter, number: int = 1) -> Page:
    """One page of matching runs, newest first, as `recovery-cli workflow list --json` shows
    them."""
    page = Page(size=PAGE_SIZE, matching=count_runs(rt.engine, flt))
    page.number = min(max(1, number), page.pages)
    page.total = count_runs(rt.engine, RunFilter())
    page.rows = list_runs(rt.engine, flt, limit=page.size,
                          offset=(page.number - 1) * page.size)
    return page


def workflow_names(rt: Runtime) -> list[str]:
    """The workflows defined now (none when the definitions cannot be loaded)."""
    try:
        return sorted(workflows(rt))
    except WorkflowError:
        return []


def run_detail(rt: Runtime, run_id: str) -> dict[str, Any] | None:
    """The run as `workflow show --json` shows it, its steps with the console's extra columns;
    None when there is no such run."""
    found = get_run(rt.engine, run_id)
    if found is None:
        return None
    run = shown_run(rt, found)
    workflow = _workflow(rt, run["workflow"])
    classes = _error_classes(rt, [s["job_id"] for s in run["steps"] if s["job_id"]])
    statuses = {step["step"]: step["status"] for step in run["steps"]}
    bars = step_bars(run)
    run["rows"] = [{**step, "integration": step_integration(workflow, step["step"]),
                    "error_classes": classes.get(step["job_id"] or "", []),
                    "compensation": _compensation(workflow, step["step"], statuses),
                    **bars.get(step["step"], {})} for step in run["steps"]]
    return run


def job_run_link(rt: Runtime, job: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run and step a job was made for (an api_call step), told by its idempotency key and
    checked against the run's steps; None for any other job. `current` is False for a job of
    an earlier try of a step that a replay ran again under a new job."""
    named = step_of_key(job.get("idempotency_key"))
    if named is None:
        return None
    step = find_step(rt.engine, *named)
    if step is None:
        return None
    return {**step, "current": step["job_id"] == job.get("id")}


def _workflow(rt: Runtime, name: str) -> Workflow | None:
    try:
        return get_workflow(rt, name)
    except (WorkflowError, WorkflowInputError):
        return None


def _compensation(workflow: Workflow | None, step_id: str,
                  statuses: Mapping[str, str]) -> dict[str, str] | None:
    """The step's undo step and its status, when the step has one."""
    if workflow is None or step_id not in {s.id for s in workflow.steps}:
        return None
    undo = workflow.step(step_id).compensate
    if undo is None:
        return None
    return {"step": undo, "status": statuses.get(undo, "pending")}


def _error_classes(rt: Runtime, job_ids: list[str]) -> dict[str, list[str]]:
    """Each job's error classes of its latest attempt that had any."""
    if not job_ids:
        return {}
    query = (select(Attempt.job_id, Attempt.error_categories)
             .where(Attempt.job_id.in_(job_ids)).order_by(Attempt.id))
    found: dict[str, list[str]] = {}
    with rt.engine.connect() as conn:
        for job_id, categories in conn.execute(query):
            if categories:
                found[job_id] = list(categories)
    return found


def step_bars(run: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Each started step's bar: its start and length in percent of the run's span so far."""
    origin = parse_time(run["created_at"])
    now = datetime.now(UTC)
    spans = {}
    for step in run["steps"]:
        if step["started_at"]:
            start = parse_time(step["started_at"])
            end = parse_time(step["finished_at"]) if step["finished_at"] else now
            spans[step["step"]] = ((start - origin).total_seconds(),
                                   (end - start).total_seconds())
    if not spans:
        return {}
    whole = max(max(offset + length for offset, length in spans.values()), 0.001)
    return {step: {"left_pct": round(offset / whole * 100, 2),
                   "width_pct": max(round(length / whole * 100, 2), 0.5)}
            for step, (offset, length) in spans.items()}
