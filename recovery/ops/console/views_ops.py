"""Pages: login, overview, breakers and rate limits, jobs (workflow runs: views_workflows)."""

from __future__ import annotations

from typing import Any

import redis
import structlog
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from recovery.audit.queries import get_job
from recovery.config.registry import UnknownIntegrationError
from recovery.ops.console import actions, jobsearch, workflowview
from recovery.ops.console import overview as overview_data
from recovery.ops.console.app import runtime
from recovery.ops.console.config import ConsoleConfig
from recovery.ops.console.security import operator_only, safe_next
from recovery.ops.console.throttle import LoginThrottle, minutes

auth = Blueprint("auth", __name__)
overview = Blueprint("overview", __name__)
breakers = Blueprint("breakers", __name__, url_prefix="/breakers")
jobs = Blueprint("jobs", __name__, url_prefix="/jobs")

REASON_CHARS = 200

log = structlog.get_logger(__name__)


def _config() -> ConsoleConfig:
    found: ConsoleConfig = current_app.extensions["recovery"]["config"]
    return found


@auth.route("/login", methods=["GET", "POST"])
def login() -> Any:
    config = _config()
    if config.auth_header is not None:
        abort(404, "Users are named by the reverse proxy; there is no login page.")
    if request.method == "GET":
        return render_template("login.html", error=None)
    name = request.form.get("username", "")[:64]
    client = request.remote_addr or "-"
    throttle: LoginThrottle = current_app.extensions["recovery"]["throttle"]
    wait_s = throttle.wait_s(client, name)
    if wait_s > 0:
        log.warning("console_login_throttled", remote=client)
        error = (f"Too many failed logins; try again in {minutes(wait_s)} minute"
                 f"{'' if minutes(wait_s) == 1 else 's'}.")
        return render_template("login.html", error=error), 429
    user = config.check_password(name, request.form.get("password", "")[:1024])
    if user is None:
        throttle.failed(client, name)
        log.warning("console_login_refused", remote=client)
        return render_template("login.html", error="The user name or password is wrong."), 401
    throttle.succeeded(client, name)
    session.clear()  # a fresh session (and CSRF token) on login: no fixation
    session.update(user=user.name, role=user.role)
    session.permanent = True
    log.warning("console_login", user=user.name, role=user.role)
    return redirect(safe_next(request.args.get("next")), code=303)


@auth.route("/logout", methods=["POST"])
def logout() -> Response:
    session.clear()
    return redirect(url_for("auth.login"), code=303)


@overview.route("/")
def index() -> str:
    return render_template("overview.html", data=overview_data.snapshot(runtime()))


@overview.route("/overview.json")
def refresh() -> Response:
    """The overview's numbers and charts, for the page's refresh script."""
    data = overview_data.snapshot(runtime())
    data["html"] = render_template("_overview_body.html", data=data)
    return jsonify(data)


def _breaker_row(rt: Any, integration: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"integration": integration.id}
    try:
        snap = rt.breaker(integration).snapshot()
        row.update(state=snap.state, consecutive_failures=snap.consecutive_failures,
                   window_calls=snap.window_calls, window_failures=snap.window_failures,
                   opened_at=snap.opened_at.isoformat() if snap.opened_at else None,
                   time_to_half_open_s=snap.time_to_half_open_s, backend=snap.backend)
        row["rate"] = rt.limiter.usage(integration.id, integration.rate_limit)
    except redis.RedisError as exc:
        row.update(state="unknown", error=str(exc).splitlines()[0][:200])
    return row


@breakers.route("/")
def breaker_list() -> str:
    rt = runtime()
    return render_template("breakers.html",
                           rows=[_breaker_row(rt, integration) for integration in rt.registry])


@breakers.route("/<integration_id>/<action>", methods=["POST"])
@operator_only
def breaker_action(integration_id: str, action: str) -> Response:
    rt = runtime()
    reason = request.form.get("reason", "").strip()[:REASON_CHARS] or None
    try:
        if action == "resume":
            left = actions.resume_rate_limit(rt, g.user, integration_id, reason)
            flash(f"Rate limit of {integration_id} resumed ({left:.1f} s of pause lifted).")
        else:
            state = actions.steer_breaker(rt, g.user, integration_id, action, reason)
            flash(f"Breaker of {integration_id} is now {state}.")
    except UnknownIntegrationError as exc:
        abort(404, str(exc))
    except ValueError as exc:
        abort(400, str(exc))
    return redirect(url_for("breakers.breaker_list"), code=303)


@jobs.route("/")
def job_search() -> Any:
    rt = runtime()
    error, rows = None, []
    try:
        query = jobsearch.parse_query(request.args)
        rows = jobsearch.search(rt.engine, query)
    except jobsearch.SearchError as exc:
        error = str(exc)
    return render_template("jobs.html", rows=rows, error=error, args=request.args,
                           statuses=jobsearch.STATUSES,
                           integrations=rt.registry.ids()), 400 if error else 200


@jobs.route("/<job_id>")
def job_detail(job_id: str) -> str:
    job = get_job(runtime().engine, job_id[:64])
    if job is None:
        abort(404, f"No job {job_id[:64]!r} is in the audit trail; search for it on the Jobs "
                   "page.")
    return render_template("job.html", job=job, timeline=jobsearch.timeline(job),
                           run_link=workflowview.job_run_link(runtime(), job))
