"""Workflows through real workers: parallel branches, a non-critical failure, a critical
failure resumed by a replay that repeats no finished step, and a saga's compensation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from recovery.cli.main import main
from recovery.core.redact import describe_body
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from recovery.engine.workflows import store
from recovery.engine.workflows.runs import get_workflow, send_step
from recovery.engine.workflows.store import StepOutcome, get_run
from recovery.telemetry.exposition import render
from recovery.telemetry.metrics import RedisStore
from tests.integration.conftest import wait_for_status

pytestmark = pytest.mark.integration

SLOW_MS = 1500


def integration(ident: str, url: str, attempts: int = 2) -> dict[str, Any]:
    return {"id": ident, "base_url": url, "timeout_ms": 4000,
            "retry": {"max_attempts": attempts, "initial_delay_ms": 100, "backoff_factor": 1,
                      "max_delay_ms": 200, "jitter": 0},
            "circuit_breaker": {"threshold": 50, "reset_timeout_ms": 1000},
            "fallbacks": [], "rate_limit": {"window_ms": 1000, "max_requests": 1000}}


def call(step_id: str, integration_id: str, path: str, *, depends_on: list[str],
         json_body: Any = None, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"integration": integration_id, "method": "POST", "path": path}
    if json_body is not None:
        config["json"] = json_body
    return {"id": step_id, "type": "api_call", "depends_on": depends_on, "config": config,
            **extra}


def order_steps(*, persist_undo: bool = False, crm_undo: bool = False,
                notify_critical: bool = False) -> list[dict[str, Any]]:
    """validate -> charge -> (crm | notify) -> persist, with optional undo steps."""
    steps = [
        {"id": "validate", "type": "validation",
         "config": {"callable": "recovery.demo.order.validate_order", "inputs": "${input}"}},
        call("charge", "payments", "/charges", depends_on=["validate"],
             json_body={"order_id": "${input.order_id}", "amount": "${steps.validate.amount}"},
             **({"compensate": "refund"} if persist_undo else {})),
        call("crm", "crm", "/contacts", depends_on=["charge"],
             json_body={"email": "${input.email}", "charge": "${steps.charge.body.n}"},
             **({"compensate": "uncontact"} if crm_undo else {})),
        call("notify", "notify", "/notifications", depends_on=["charge"],
             json_body={"to": "${input.email}"}, critical=notify_critical),
        {"id": "persist", "type": "persistence", "depends_on": ["crm", "notify"],
         "config": {"callable": "recovery.demo.order.save_order",
                    "inputs": {"order": "${input}", "charge": "${steps.charge.body}",
                               "crm": "${steps.crm.body}"}}},
    ]
    if persist_undo:
        steps.append(call("refund", "payments", "/refunds", depends_on=[],
                          json_body={"charge": "${steps.charge.body.n}"}))
    if crm_undo:
        steps.append(call("uncontact", "crm", "/contacts/remove", depends_on=[],
                          json_body={"email": "${input.email}"}))
    return steps


class Upstreams:
    def __init__(self) -> None:
        self.payments = FaultServer().start()
        self.crm = FaultServer().start()
        self.notify = FaultServer().start()

    def stop(self) -> None:
        for server in (self.payments, self.crm, self.notify):
            server.stop()


@pytest.fixture
def upstreams() -> Any:
    servers = Upstreams()
    yield servers
    servers.stop()


@pytest.fixture
def setup(configure: Callable[..., dict[str, str]], upstreams: Upstreams, tmp_path: Path,
          start_worker: Callable[..., Any]) -> Callable[..., dict[str, str]]:
    def apply(steps: list[dict[str, Any]], concurrency: int = 3,
              on_failure: str = "compensate", **env_extra: str) -> Any:
        path = tmp_path / "workflows.yaml"
        path.write_text(yaml.safe_dump({"workflows": [
            {"name": "order", "on_failure": on_failure, "steps": steps}]}))
        env = configure([integration("payments", upstreams.payments.url),
                         integration("crm", upstreams.crm.url),
                         integration("notify", upstreams.notify.url)],
                        RECOVERY_WORKFLOWS=str(path), ORDER_STORE_DIR=str(tmp_path / "orders"),
                        LOG_LEVEL="info", **env_extra)
        return start_worker(env, concurrency=concurrency)
    return apply


ORDER = {"order_id": "A-17", "amount": 2500, "email": "ada@example.test"}


def run_cli(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    return result


def start(order: dict[str, Any] = ORDER) -> str:
    result = run_cli("workflow", "run", "order", "--input", json.dumps(order))
    assert result.exit_code == 0, result.output
    return str(result.stdout.strip())  # log lines go to stderr


def wait_run(run_id: str, statuses: set[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    run = None
    while time.monotonic() < deadline:
        run = get_run(get_runtime().engine, run_id)
        if run is not None and run["status"] in statuses:
            return run
        time.sleep(0.2)
    raise AssertionError(f"Run {run_id} did not reach {statuses} in {timeout} s; last: {run}")


def steps_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step"]: step for step in run["steps"]}


def api_requests(server: FaultServer, path: str | None = None) -> list[dict[str, Any]]:
    return [r for r in server.requests() if r["path"] != "/health"
            and (path is None or r["path"] == path)]


def test_parallel_branches_overlap_and_outputs_flow_between_steps(
        setup: Callable[..., dict[str, str]], upstreams: Upstreams, tmp_path: Path) -> None:
    setup(order_steps())
    upstreams.crm.set_mode("slow", delay_ms=SLOW_MS)
    upstreams.notify.set_mode("slow", delay_ms=SLOW_MS)
    run = wait_run(start(), {"succeeded", "degraded", "dead", "compensated"})
    assert run["status"] == "succeeded", run
    crm, notify = api_requests(upstreams.crm)[0], api_requests(upstreams.notify)[0]
    # both calls started before either answered: they ran at the same time on two workers
    assert abs(crm["time"] - notify["time"]) < SLOW_MS / 1000
    charge = api_requests(upstreams.payments, "/charges")
    assert len(charge) == 1 and charge[0]["idempotency_key"] == f"wf-{run['id']}-charge"
    steps = steps_of(run)
    assert steps["charge"]["output"]["body"]["json"] == {"order_id": "A-17", "amount": 2500}
    assert steps["crm"]["output"]["body"]["json"] == {"email": "ada@example.test",
                                                      "charge": charge[0]["n"]}
    record = tmp_path / "orders" / f"{run['id']}_persist.json"
    assert json.loads(record.read_text())["charge"]["n"] == charge[0]["n"]
    assert steps["persist"]["output"] == {"persisted": True, "record": record.name}
    assert all(step["status"] == "succeeded" and step["attempts"] == 1
               for step in run["steps"])
    job = wait_for_status(get_runtime().engine, steps["charge"]["job_id"], {"succeeded"})
    assert (job["integration"], job["path"]) == ("payments", "/charges")
    assert [a["http_status"] for a in job["attempts"] if a["kind"] == "call"] == [200]
    shown = run_cli("workflow", "show", run["id"], "--json")
    displayed = json.loads(shown.stdout)
    assert displayed["status"] == "succeeded"
    assert displayed["input"] == {"[REDACTED]": describe_body(ORDER)}
    charge_shown = {s["step"]: s for s in displayed["steps"]}["charge"]["output"]
    assert charge_shown["http_status"] == 200
    assert list(charge_shown["body"]) == ["[REDACTED]"]
    for text in (shown.stdout, run_cli("workflow", "show", run["id"]).stdout):
        assert "ada@example.test" not in text and "A-17" not in text
    listed = json.loads(run_cli("workflow", "list", "--json").stdout)
    assert [item["id"] for item in listed] == [run["id"]]


def test_with_encryption_keys_inputs_and_outputs_are_stored_sealed(
        setup: Callable[..., dict[str, str]], upstreams: Upstreams) -> None:
    """A resumable run keeps its input and step outputs; with RECOVERY_ENCRYPTION_KEYS they
    are Fernet tokens in PostgreSQL, and the run still flows and shows as before."""
    from cryptography.fernet import Fernet
    from sqlalchemy import text

    setup(order_steps(), RECOVERY_ENCRYPTION_KEYS=Fernet.generate_key().decode())
    run = wait_run(start(), {"succeeded", "degraded", "dead", "compensated"})
    assert run["status"] == "succeeded", run
    assert steps_of(run)["crm"]["output"]["body"]["json"]["email"] == "ada@example.test"
    with get_runtime().engine.connect() as conn:
        stored = [str(row) for table in ("workflow_runs", "step_runs")
                  for row in conn.execute(text(f"SELECT * FROM {table}"))]
    assert stored and all("ada@example.test" not in row and "A-17" not in row
                          for row in stored)
    assert sum(store.SEALED in row for row in stored) >= 1 + len(run["steps"])


def test_a_failed_non_critical_step_degrades_the_run_and_the_rest_goes_on(
        setup: Callable[..., dict[str, str]], upstreams: Upstreams) -> None:
    worker = setup(order_steps())
    upstreams.notify.set_mode("5xx", status=503)
    run = wait_run(start(), {"succeeded", "degraded", "dead", "compensated"})
    assert run["status"] == "degraded", run
    steps = steps_of(run)
    assert steps["notify"]["status"] == "failed" and steps["notify"]["attempts"] == 2
    assert "failed for good after 2 attempt(s)" in steps["notify"]["error"]
    assert steps["persist"]["status"] == "succeeded"
    job = wait_for_status(get_runtime().engine, steps["notify"]["job_id"], {"failed"})
    assert [a["http_status"] for a in job["attempts"] if a["kind"] == "call"] == [503, 503]
    assert run["error"] == "Non-critical steps did not succeed: notify."
    assert len(api_requests(upstreams.notify)) == 2
    report = json.loads(run_cli("report", "--since", "1h", "--json").stdout)
    assert report["workflow_runs"] == [{"workflow": "order", "status": "degraded", "runs": 1}]
    assert wait_metric('workflow_runs_total{outcome="degraded",workflow="order"} 1.0')
    events = [json.loads(line) for line in worker.log_path.read_text().splitlines()
              if line.startswith("{")]
    finished = [e for e in events if e["event"] == "workflow_step_finished"
                and e["step"] == "notify"]
    assert len(finished) == 1 and finished[0]["run_id"] == run["id"]
    assert finished[0]["status"] == "failed" and finished[0]["task_id"]
    calls = [e for e in events if e.get("step") == "notify" and e.get("job_id")]
    assert calls and all(e["job_id"] == steps["notify"]["job_id"] for e in calls)


def wait_metric(line: str, timeout: float = 10.0) -> bool:
    """Workers send their counts to Redis about once a second; poll the rendered metrics."""
    rt = get_runtime()
    assert rt.redis is not None
    store = RedisStore(rt.redis, rt.settings.redis_key_prefix)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in render(store).decode():
            return True
        time.sleep(0.2)
    raise AssertionError(f"{line!r} not in the metrics: {render(store).decode()[-2000:]}")


def test_a_critical_failure_dead_letters_the_run_and_replay_resumes_without_repeats(
        setup: Callable[..., dict[str, str]], upstreams: Upstreams) -> None:
    setup(order_steps())
    upstreams.crm.set_mode("5xx", status=500)
    run = wait_run(start(), {"succeeded", "degraded", "dead", "compensated"})
    assert (run["status"], run["failed_step"]) == ("dead", "crm"), run
    before = steps_of(run)
    assert before["persist"]["status"] == "pending"
    assert before["charge"]["status"] == before["notify"]["status"] == "succeeded"
    shown = run_cli("workflow", "show", run["id"]).stdout.splitlines()
    assert shown[0] == f"run {run['id']}  workflow=order  status=dead  replays=0"
    crm_line = next(line for line in shown if line.startswith("  crm "))
    assert crm_line.split()[1:4] == ["api_call", "failed", "attempts=2"]
    assert shown[shown.index(crm_line) + 1].strip().startswith(
        "The call failed for good after 2 attempt(s):")
    listed = json.loads(run_cli("workflow", "list", "--status", "dead", "--json").stdout)
    assert [item["id"] for item in listed] == [run["id"]]

    upstreams.crm.set_mode("ok")
    replayed = run_cli("workflow", "replay", run["id"])
    assert replayed.exit_code == 0, replayed.output
    after = wait_run(run["id"], {"succeeded", "degraded", "dead", "compensated"})
    assert (after["status"], after["replay_count"]) == ("succeeded", 1), after
    steps = steps_of(after)
    assert len(api_requests(upstreams.payments, "/charges")) == 1  # not charged again
    assert len(api_requests(upstreams.notify)) == 1
    assert len(api_requests(upstreams.crm)) == 3  # two failed attempts, one after the replay
    for name in ("validate", "charge", "notify"):  # finished steps kept, not run again
        assert steps[name]["started_at"] == before[name]["started_at"]
        assert steps[name]["output"] == before[name]["output"]
    assert steps["crm"]["status"] == steps["persist"]["status"] == "succeeded"
    again = run_cli("workflow", "replay", run["id"])
    assert again.exit_code == 1
    assert again.output.strip().endswith(
        f"Workflow run {run['id']} is succeeded; only a dead run can be replayed (a "
        "compensated run was undone: start a new run).")


def test_a_saga_undoes_completed_steps_in_reverse_completion_order(
        setup: Callable[..., dict[str, str]], upstreams: Upstreams) -> None:
    setup(order_steps(persist_undo=True, crm_undo=True))
    run = wait_run(start({**ORDER, "fail_persist": True}),
                   {"succeeded", "degraded", "dead", "compensated"})
    assert (run["status"], run["failed_step"]) == ("compensated", "persist"), run
    steps = steps_of(run)
    assert "The order store refused the record" in steps["persist"]["error"]
    assert steps["refund"]["status"] == steps["uncontact"]["status"] == "succeeded"
    refund = api_requests(upstreams.payments, "/refunds")
    uncontact = api_requests(upstreams.crm, "/contacts/remove")
    charge = api_requests(upstreams.payments, "/charges")[0]
    assert len(refund) == len(uncontact) == 1
    # crm completed after charge, so it is undone first
    assert uncontact[0]["time"] < refund[0]["time"]
    assert steps["refund"]["output"]["body"]["json"] == {"charge": charge["n"]}
    refused = run_cli("workflow", "replay", run["id"])
    assert refused.exit_code == 1 and "is compensated; only a dead run" in refused.output


def test_a_parked_run_keeps_its_work_until_an_operator_compensates_it(
        setup: Callable[..., dict[str, str]], upstreams: Upstreams) -> None:
    setup(order_steps(persist_undo=True), on_failure="park")
    run = wait_run(start({**ORDER, "fail_persist": True}),
                   {"succeeded", "degraded", "dead", "compensated"})
    assert (run["status"], run["failed_step"]) == ("dead", "persist"), run
    assert api_requests(upstreams.payments, "/refunds") == []  # parked: nothing undone yet
    given_up = run_cli("workflow", "compensate", run["id"])
    assert given_up.exit_code == 0, given_up.output
    assert given_up.stdout.strip() == (f"Workflow run {run['id']} is compensating: undoing "
                                       "charge.")
    after = wait_run(run["id"], {"compensated"})
    assert steps_of(after)["refund"]["status"] == "succeeded"
    assert len(api_requests(upstreams.payments, "/refunds")) == 1
    again = run_cli("workflow", "compensate", run["id"])
    assert (again.exit_code, again.stderr.strip()) == (1, (
        f"Error: Workflow run {run['id']} is compensated; only a dead run can be compensated."))


def test_steps_whose_message_never_left_are_sent_when_the_finished_step_comes_again(
        setup: Callable[..., dict[str, str]], upstreams: Upstreams) -> None:
    """A worker died after recording `validate` and queueing `charge`, before sending it:
    the redelivered `validate` message plans the run again and `charge` goes out."""
    setup(order_steps())
    rt = get_runtime()
    workflow = get_workflow(rt, "order")
    run_id = store.create_run(rt.engine, workflow, ORDER)
    assert store.advance(rt.engine, workflow, run_id).dispatch == ("validate",)
    plan = store.advance(rt.engine, workflow, run_id, "validate",
                         StepOutcome("succeeded", output={"valid": True, "amount": 2500},
                                     attempts=1))
    assert plan.dispatch == ("charge",)  # recorded and queued, but never sent
    send_step(workflow, run_id, "validate")  # the unacknowledged message, delivered again
    run = wait_run(run_id, {"succeeded", "degraded", "dead", "compensated"})
    assert run["status"] == "succeeded", run
    assert len(api_requests(upstreams.payments, "/charges")) == 1
    assert steps_of(run)["validate"]["attempts"] == 1
