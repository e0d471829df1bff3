"""The console's Workflow runs pages over real HTTP (a `recovery-cli console` process): login,
the filtered and paged list, a run with its steps, the link between a step's job and its run,
and redaction exactly as `recovery-cli workflow show --json` shows a run.

Runs are written through the workflow store as the workers would write them (no worker runs
here); the browser test runs one through a real worker.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from recovery.audit.models import AttemptRecord
from recovery.cli.main import main
from recovery.core.message import new_job_id
from recovery.engine.runtime import Runtime, get_runtime
from recovery.engine.workflows import store
from recovery.engine.workflows.keys import step_key
from recovery.engine.workflows.runs import get_workflow
from recovery.engine.workflows.store import StepOutcome
from tests.integration._console import Browser, ConsoleProcess, console_env, login
from tests.integration.test_dlq_support import integration_entry

pytestmark = pytest.mark.integration

SECRETS = ("hunter2-pw", "4111111111111111", "s3cr3t-t0ken", "tok-v4lue")
ORDER = {"order_id": "A-17", "amount": 700, "email": "ada@example.test",
         "password": "hunter2-pw", "card_number": "4111111111111111",
         "headers": {"Authorization": "Bearer s3cr3t-t0ken"}}
STEPS = [
    {"id": "validate", "type": "validation",
     "config": {"callable": "recovery.demo.order.validate_order", "inputs": "${input}"}},
    {"id": "charge", "type": "api_call", "depends_on": ["validate"], "compensate": "refund",
     "config": {"integration": "payments", "method": "POST", "path": "/charges",
                "json": {"card": "${input.card_number}"}}},
    {"id": "refund", "type": "api_call",
     "config": {"integration": "payments", "method": "POST", "path": "/refunds"}},
    {"id": "notify", "type": "api_call", "depends_on": ["charge"],
     "config": {"integration": "notify", "method": "POST", "path": "/notifications"}},
]


@pytest.fixture
def console(configure: Callable[..., dict[str, str]], tmp_path: Path
            ) -> Iterator[ConsoleProcess]:
    """Integrations payments (its audit policy shows a charge's `status_text`) and notify, the
    workflow `order` (parked when a step fails), and a console on them."""
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text(yaml.safe_dump({"workflows": [
        {"name": "order", "on_failure": "park", "steps": STEPS}]}))
    payments = {**integration_entry("payments"), "audit": {"show_body_fields": ["status_text"]}}
    env = configure([payments, integration_entry("notify")], RECOVERY_WORKFLOWS=str(workflows))
    process = ConsoleProcess(console_env(env), tmp_path / "console.log")
    yield process
    process.stop()


def _job(rt: Runtime, run_id: str, step_id: str, categories: tuple[str, ...] = ()) -> str:
    """The audit rows of a step's job, as a worker writes them (one attempt)."""
    job_id = new_job_id()
    rt.audit.job_queued(job_id, "payments", "POST", "/charges", {}, step_key(run_id, step_id))
    rt.audit.attempt(AttemptRecord(job_id=job_id, number=1, kind="call",
                                   started_at=datetime.now(UTC), duration_ms=12,
                                   decision="fail" if categories else "done",
                                   http_status=503 if categories else 200,
                                   error_categories=categories))
    return job_id


def parked_run(rt: Runtime) -> tuple[str, dict[str, str]]:
    """A run of `order` whose charge succeeded and whose notify failed for good (parked)."""
    workflow = get_workflow(rt, "order")
    run_id = store.create_run(rt.engine, workflow, ORDER)
    jobs = {"charge": _job(rt, run_id, "charge"),
            "notify": _job(rt, run_id, "notify", ("server_error",))}
    outcomes = {
        "validate": StepOutcome("succeeded", output={"valid": True, "amount": 700}, attempts=1),
        "charge": StepOutcome("succeeded", attempts=1, output={
            "status": "succeeded", "http_status": 200, "fallback": None,
            "body": {"status_text": "captured-ok", "card_number": "4111111111111111",
                     "token": "tok-v4lue"}}),
        "notify": StepOutcome("failed", attempts=1,
                              error="The call failed for good after 1 attempt(s): HTTP 503"),
    }
    waiting = list(store.advance(rt.engine, workflow, run_id).dispatch)
    while waiting:
        step_id = waiting.pop(0)
        store.start_step(rt.engine, run_id, step_id)
        if step_id in jobs:
            store.set_step_fields(rt.engine, run_id, step_id, job_id=jobs[step_id])
        waiting += store.advance(rt.engine, workflow, run_id, step_id,
                                 outcomes[step_id]).dispatch
    rt.audit.flush()
    return run_id, jobs


def step_row(page: str, step_id: str, table: str = "data-step") -> str:
    """The HTML of a step's row in the steps table (or, with "data-output", its output's)."""
    return page.split(f'{table}="{step_id}"', 1)[1].split("</tr>", 1)[0]


def cli_show(run_id: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["workflow", "show", run_id, "--json"])
    assert result.exit_code == 0, result.output
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


def test_without_a_login_the_workflow_pages_redirect_to_the_login(console) -> None:
    run_id, _ = parked_run(get_runtime())
    anonymous = Browser(console.base)
    for path in ("/workflows/", f"/workflows/{run_id}"):
        response = anonymous.page(path)
        assert response.status_code == 303, path
        assert response.headers["Location"].startswith("/login?next="), path


def test_viewer_and_operator_see_the_run_and_its_steps_redacted_like_the_cli(console) -> None:
    rt = get_runtime()
    run_id, jobs = parked_run(rt)
    shown = cli_show(run_id)
    assert shown["status"] == "dead" and shown["failed_step"] == "notify"
    for user in ("alice", "bob"):
        session = login(console.base, user)
        listing = session.page("/workflows/")
        assert listing.status_code == 200
        assert f'data-run="{run_id}"' in listing.text and "order" in listing.text
        assert session.page("/jobs/").text.count('href="/workflows/"') >= 2  # nav and page
        response = session.page(f"/workflows/{run_id}")
        assert response.status_code == 200
        page = html.unescape(response.text)
        assert 'id="run-status">dead<' in page
        for step in shown["steps"]:
            assert f'status-{step["status"]}">{step["status"]}<' in step_row(page, step["step"])
            output = "-" if step["output"] is None else json.dumps(step["output"],
                                                                    sort_keys=True)
            assert f"<code>{output}</code>" in step_row(page, step["step"], "data-output")
        assert json.dumps(shown["input"], sort_keys=True) in page
        assert "captured-ok" in page  # the field payments' audit policy shows
        for text in (listing.text, page):
            assert not any(secret in text for secret in SECRETS)
    charge = step_row(page, "charge")
    assert f'href="/jobs/{jobs["charge"]}"' in charge and "payments" in charge
    assert "refund: pending" in charge  # its undo step has not run (the run is parked)
    assert "server_error" in step_row(page, "notify")
    assert "HTTP 503" in step_row(page, "notify", "data-output")


def test_a_steps_job_page_links_to_its_run(console) -> None:
    run_id, jobs = parked_run(get_runtime())
    alice = login(console.base, "alice")
    job_page = alice.page(f"/jobs/{jobs['charge']}").text
    assert f'href="/workflows/{run_id}" id="job-run-link"' in job_page
    assert "step charge of" in job_page and "an earlier try" not in job_page
    earlier = _job(get_runtime(), run_id, "charge")  # the step's key, not its job now
    lone = _job(get_runtime(), run_id, "ship")  # a key naming a step the run does not have
    get_runtime().audit.flush()
    earlier_page = html.unescape(alice.page(f"/jobs/{earlier}").text)
    assert f'href="/workflows/{run_id}" id="job-run-link"' in earlier_page
    assert "(an earlier try: a replay ran the step again as another job)" in earlier_page
    assert 'id="job-run-link"' not in alice.page(f"/jobs/{lone}").text


def test_runs_filter_and_page_newest_first_and_bad_filters_get_a_sentence(console) -> None:
    rt = get_runtime()
    dead_id, _ = parked_run(rt)
    workflow = get_workflow(rt, "order")
    running = [store.create_run(rt.engine, workflow, {"n": n}) for n in range(25)]
    alice = login(console.base, "alice")

    def count(**params: str) -> str:
        response = alice.page("/workflows/", **params)
        assert response.status_code == 200, response.text
        return response.text.split('id="run-count">', 1)[1].split(" runs", 1)[0]

    assert count() == "26 matching of 26"
    assert count(status="dead") == "1 matching of 26"
    assert count(workflow="order", status="running") == "25 matching of 26"
    assert count(workflow="other") == "0 matching of 26"
    assert count(since="2020-01-01T00:00", until="2020-12-31T00:00") == "0 matching of 26"
    first, second = alice.page("/workflows/").text, alice.page("/workflows/", page="2").text
    assert first.count("data-run=") == 25 and second.count("data-run=") == 1
    assert first.index(f'data-run="{running[-1]}"') < first.index(f'data-run="{running[0]}"')
    assert f'data-run="{dead_id}"' in second and "page 2 of 2" in second
    for params, sentence in (
            ({"status": "nope"}, "Unknown run status 'nope'; use one of running, failing"),
            ({"since": "soon"}, "From must be an ISO 8601 time such as 2026-05-01T12:00"),
            ({"since": "2026-05-02", "until": "2026-05-01"},
             "From must not be later than Until.")):
        response = alice.page("/workflows/", **params)
        assert response.status_code == 400
        assert sentence in html.unescape(response.text), params


def test_an_unknown_run_is_404_with_a_sentence(console) -> None:
    response = login(console.base, "bob").page("/workflows/no-such-run")
    assert response.status_code == 404
    assert ("There is no workflow run 'no-such-run'; the Workflow runs page lists the runs."
            in html.unescape(response.text))
