"""Dead-letter pages: the filtered list, one entry, replay (dry run, then confirm), purge
(confirmation page), and the quarantine."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from recovery.dlq.purge import ReleaseError
from recovery.ops.console import actions, dlqview
from recovery.ops.console.app import runtime
from recovery.ops.console.security import operator_only

dlq = Blueprint("dlq", __name__, url_prefix="/dlq")

#: A confirm form carries the job ids its dry run would move (replay or quarantine), up to this
#: many, so the replay moves what the operator saw; beyond that it carries only the filter.
MAX_CONFIRM_IDS = 1000
MAX_RATE = 1_000_000.0
FILTER_FIELDS = ("integration", "error_class", "newer_than", "older_than", "min_replays",
                 "max_replays")


def _filter(form: Any) -> dlqview.ConsoleFilter:
    try:
        return dlqview.parse_filter(form, runtime().registry.ids())
    except dlqview.FilterError as exc:
        abort(400, str(exc))


def _list_args() -> dict[str, str]:
    return {name: request.args.get(name, "") for name in FILTER_FIELDS}


@dlq.route("/")
def dlq_list() -> Any:
    rt = runtime()
    args = _list_args()
    error, page = None, dlqview.Page()
    try:
        flt = dlqview.parse_filter(request.args, rt.registry.ids())
        number = int(request.args.get("page", "1")) if request.args.get(
            "page", "1").isdigit() else 1
        page = dlqview.list_page(rt, flt, number)
    except dlqview.FilterError as exc:
        error = str(exc)
    return render_template("dlq_list.html", page=page, args=args, error=error,
                           integrations=rt.registry.ids(),
                           error_classes=dlqview.ERROR_CLASSES), 400 if error else 200


@dlq.route("/entry/<job_id>")
def dlq_entry(job_id: str) -> str:
    shown, job = dlqview.entry_detail(runtime(), job_id[:64])
    if shown is None and job is None:
        abort(404, f"No dead letter or job {job_id[:64]!r} exists; the Dead letters page shows "
                   "what is in the DLQ.")
    return render_template("dlq_entry.html", entry=shown, job=job, job_id=job_id[:64])


def _limit_and_rate(form: Any) -> tuple[int | None, float | None]:
    limit_text, rate_text = form.get("limit", "").strip(), form.get("rate", "").strip()
    limit = rate = None
    if limit_text:
        if not limit_text.isdigit() or int(limit_text) < 1:
            abort(400, f"The cap must be a whole number of at least 1, got {limit_text[:20]!r}.")
        limit = int(limit_text)
    if rate_text:
        try:
            rate = float(rate_text)
        except ValueError:
            rate = -1.0
        if not 0 < rate <= MAX_RATE:
            abort(400, f"The rate must be a number of entries per second above 0 and at most "
                       f"{MAX_RATE:g}, got {rate_text[:20]!r}.")
    return limit, rate


@dlq.route("/replay", methods=["POST"])
@operator_only
def dlq_replay() -> Any:
    """Without `confirm`: the dry run and a confirm form. With it: the replay itself."""
    flt = _filter(request.form)
    if request.form.get("scope") == "selected" and flt.job_ids is None:
        abort(400, "Select at least one dead letter to replay, or replay all matching.")
    if request.form.get("scope") == "all":
        flt = replace(flt, job_ids=None)
    limit, rate = _limit_and_rate(request.form)
    rt = runtime()
    if request.form.get("confirm") != "yes":
        report = actions.replay(rt, g.user, flt, limit=limit, rate=rate, dry_run=True)
        planned = sorted({item.job_id for item in report.items
                          if item.action in ("replay", "quarantine") and item.job_id})
        keep = planned if len(planned) <= MAX_CONFIRM_IDS else None
        return render_template("dlq_replay.html", report=report, form=request.form,
                               planned=keep, limit=limit, rate=rate,
                               fields=FILTER_FIELDS)
    report = actions.replay(rt, g.user, flt, limit=limit, rate=rate, dry_run=False)
    return render_template("dlq_replay_done.html", report=report)


@dlq.route("/purge", methods=["POST"])
@operator_only
def dlq_purge() -> Any:
    """Without `confirm`: the entries to purge and a confirm button. With it: the purge."""
    selected = sorted({job_id[:64] for job_id in request.form.getlist("job_id") if job_id})
    if not selected:
        abort(400, "Select at least one dead letter to purge.")
    rt = runtime()
    if request.form.get("confirm") != "yes":
        rows = dlqview.list_page(rt, dlqview.ConsoleFilter(job_ids=frozenset(selected)),
                                 1, dlqview.MAX_PAGE_SIZE).rows
        return render_template("dlq_purge.html", rows=rows, selected=selected)
    report = actions.purge_selected(rt, g.user, selected)
    flash(f"Purged {report.purged} dead letters for good; {report.kept} stay in the DLQ.")
    return redirect(url_for("dlq.dlq_list"), code=303)


@dlq.route("/quarantine")
def dlq_quarantine() -> str:
    return render_template("quarantine.html", rows=dlqview.quarantine_rows(runtime()))


@dlq.route("/quarantine/<job_id>/release", methods=["POST"])
@operator_only
def dlq_release(job_id: str) -> Response:
    """Send one quarantined job back to its work queue, once past the replay cap."""
    try:
        job = actions.release_quarantined(runtime(), g.user, job_id[:64])
    except ReleaseError as exc:
        abort(409, str(exc))
    flash(f"Released job {job.job_id}: queued again as replay {job.replay_count}.")
    return redirect(url_for("dlq.dlq_quarantine"), code=303)
