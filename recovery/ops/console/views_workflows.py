"""Pages: workflow runs (filtered, paged, newest first) and one run with its steps. Read-only:
viewers and operators alike may read them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, render_template, request

from recovery.ops.console import workflowview
from recovery.ops.console.app import runtime
from recovery.ops.console.dlqview import Page
from recovery.ops.console.jobsearch import SearchError

workflows = Blueprint("workflows", __name__, url_prefix="/workflows")

FILTER_FIELDS = ("workflow", "status", "since", "until")


@workflows.route("/")
def run_list() -> Any:
    rt = runtime()
    args = {name: request.args.get(name, "") for name in FILTER_FIELDS}
    error, page = None, Page()
    number_text = request.args.get("page", "1")
    try:
        flt = workflowview.parse_filter(request.args)
        number = int(number_text) if number_text.isdigit() and len(number_text) <= 6 else 1
        page = workflowview.list_page(rt, flt, number)
    except SearchError as exc:
        error = str(exc)
    return render_template("workflow_runs.html", page=page, args=args, error=error,
                           statuses=workflowview.STATUSES,
                           names=workflowview.workflow_names(rt)), 400 if error else 200


@workflows.route("/<run_id>")
def run_detail(run_id: str) -> str:
    run = workflowview.run_detail(runtime(), run_id[:64])
    if run is None:
        abort(404, f"There is no workflow run {run_id[:64]!r}; the Workflow runs page lists "
                   "the runs.")
    return render_template("workflow_run.html", run=run)
