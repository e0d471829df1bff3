"""Workflows at the edge, without workers: refusals that write and send nothing, what the
broker carries for Flower, a persistence step that runs at most once, unresolved inputs."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from recovery.audit.workflow_models import WorkflowRun
from recovery.cli.main import main
from recovery.config.workflows import WorkflowStep
from recovery.engine.runtime import Runtime, get_runtime
from recovery.engine.workflows import store
from recovery.engine.workflows.execute import run_step
from recovery.engine.workflows.runs import WorkflowInputError, get_workflow, start_workflow
from recovery.engine.workflows.store import StepOutcome, StepStart

pytestmark = pytest.mark.integration

calls: list[str] = []


def record_write(inputs: Any, idempotency_key: str) -> dict[str, Any]:
    """A persistence callable for the at-most-once test (runs in the test process)."""
    calls.append(idempotency_key)
    if inputs.get("fail"):
        raise RuntimeError("the store is read-only")
    return {"saved": idempotency_key}


def add_one(inputs: Any) -> Any:
    return {"total": inputs["a"] + 1}


def not_json(inputs: Any) -> Any:
    return {"tags": {"a", "b"}}


def refuse(inputs: Any) -> bool:
    return False


def dawdle(inputs: Any) -> Any:
    time.sleep(1.0)
    return {"late": True}


STEPS = [
    {"id": "validate", "type": "validation",
     "config": {"callable": "recovery.demo.order.validate_order", "inputs": "${input}"}},
    {"id": "charge", "type": "api_call", "depends_on": ["validate"],
     "config": {"integration": "payments", "method": "POST", "path": "/charges",
                "json": {"card": "${input.card}", "amount": "${steps.validate.amount}"}}},
    {"id": "save", "type": "persistence", "depends_on": ["charge"],
     "config": {"callable": "tests.integration.test_workflow_edges.record_write",
                "inputs": {"fail": "${input.fail}"}}},
]


@pytest.fixture
def wf(configure: Callable[..., dict[str, str]], tmp_path: Path) -> Callable[..., Path]:
    def apply(document: Any) -> Path:
        path = tmp_path / "workflows.yaml"
        path.write_text(yaml.safe_dump(document))
        configure([{"id": "payments", "base_url": "http://127.0.0.1:9/v1"}],
                  RECOVERY_WORKFLOWS=str(path))
        return path
    return apply


def run_count(rt: Runtime) -> int:
    with Session(rt.engine) as session:
        return int(session.scalar(select(func.count()).select_from(WorkflowRun)) or 0)


def queued(client: redis.Redis, rt: Runtime) -> list[dict[str, Any]]:
    raw = client.lrange(f"{rt.settings.redis_key_prefix}integrations", 0, -1)
    return [json.loads(item) for item in raw]


ORDER = {"order_id": "A-1", "amount": 700, "email": "a@b.test", "card": "4242424242424242",
         "fail": False}


def test_bad_runs_are_refused_and_nothing_is_written_or_sent(
        wf: Callable[..., Path], redis_client: redis.Redis) -> None:
    wf({"workflows": [{"name": "order", "steps": STEPS}]})
    runner = CliRunner()
    cases = [
        (["nope"], "Error: There is no workflow 'nope' (known: order); define it under "
                   "'workflows:' in RECOVERY_INTEGRATIONS or RECOVERY_WORKFLOWS."),
        (["order", "--input", "[1, 2]"], "Error: The workflow input must be a JSON object, got "
                                         "list."),
        (["order", "--input", "{bad"], "Error: The --input value is not valid JSON (Expecting "
                                       "property name enclosed in double quotes: line 1 column "
                                       "2 (char 1))."),
        (["order", "--input", "@/nonexistent.json"], "Error: Cannot read the input file "
                                                     "'/nonexistent.json': No such file or "
                                                     "directory."),
    ]
    for args, sentence in cases:
        result = runner.invoke(main, ["workflow", "run", *args])
        assert (result.exit_code, result.output.strip()) == (2, sentence)
    rt = get_runtime()
    assert run_count(rt) == 0 and queued(redis_client, rt) == []


def test_an_invalid_workflows_file_stops_the_command_with_its_sentence(
        wf: Callable[..., Path], redis_client: redis.Redis) -> None:
    path = wf({"workflows": [{"name": "order", "steps": [
        {**STEPS[0], "depends_on": ["save"]}, *STEPS[1:]]}]})
    result = CliRunner().invoke(main, ["workflow", "run", "order", "--input", "{}"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {path}: workflow 'order': step 'validate': key 'depends_on' forms a cycle "
        "(validate -> save -> charge -> validate); a workflow must be a directed acyclic graph.")
    assert run_count(get_runtime()) == 0 and queued(redis_client, get_runtime()) == []


def test_flower_sees_a_step_by_name_never_its_input(
        wf: Callable[..., Path], redis_client: redis.Redis) -> None:
    wf({"workflows": [{"name": "order", "steps": STEPS}]})
    result = CliRunner().invoke(main, ["workflow", "run", "order", "--input", json.dumps(ORDER)])
    assert result.exit_code == 0, result.output
    run_id = result.output.strip()
    [message] = queued(redis_client, get_runtime())
    headers = message["headers"]
    assert headers["task"] == "tasks.workflow.step"
    assert headers["argsrepr"] == "()"
    assert headers["kwargsrepr"] == repr({"run_id": run_id, "workflow": "order",
                                          "step": "validate", "type": "validation"})
    assert "4242" not in json.dumps(headers)
    run = store.get_run(get_runtime().engine, run_id)
    assert run is not None
    steps = {s["step"]: s["status"] for s in run["steps"]}
    assert steps == {"validate": "queued", "charge": "pending", "save": "pending"}


def test_producers_start_a_run_from_python(wf: Callable[..., Path],
                                           redis_client: redis.Redis) -> None:
    wf({"workflows": [{"name": "order", "steps": STEPS}]})
    with pytest.raises(WorkflowInputError) as caught:
        start_workflow("order", "A-1")  # type: ignore[arg-type]
    assert str(caught.value) == "The workflow input must be a JSON object, got str."
    with pytest.raises(WorkflowInputError, match="The workflow input is not plain JSON"):
        start_workflow("order", {"when": object()})
    rt = get_runtime()
    assert run_count(rt) == 0 and queued(redis_client, rt) == []
    run_id = start_workflow("order", ORDER)
    [message] = queued(redis_client, rt)
    _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (message["headers"]["task"], kwargs) == ("tasks.workflow.step",
                                                    {"run_id": run_id, "step_id": "validate"})
    run = store.get_run(rt.engine, run_id)
    assert run is not None and run["input"] == ORDER and run["status"] == "running"


def _start(outputs: dict[str, Any], run_input: Any) -> StepStart:
    return StepStart("order", run_input, outputs, None, None, 0)


def run_now(rt: Runtime, run_id: str, step: WorkflowStep, start: StepStart) -> StepOutcome:
    outcome = run_step(rt, run_id, step, start, None)
    assert isinstance(outcome, StepOutcome)
    return outcome


def test_a_persistence_step_runs_at_most_once_per_run(wf: Callable[..., Path]) -> None:
    wf({"workflows": [{"name": "order", "steps": STEPS}]})
    rt = get_runtime()
    workflow = get_workflow(rt, "order")
    run_id = store.create_run(rt.engine, workflow, ORDER)
    save = workflow.step("save")
    calls.clear()
    outcome = run_now(rt, run_id, save, _start({}, {**ORDER, "fail": True}))
    assert outcome.status == "failed"
    assert outcome.error == ("Step 'save' failed: RuntimeError: the store is read-only")
    first = run_now(rt, run_id, save, _start({}, ORDER))
    assert first.output == {"saved": f"{run_id}:save"}
    second = run_now(rt, run_id, save, _start({}, ORDER))
    assert second.status == "failed"
    assert second.error == (
        f"Step 'save' did not run: its write (idempotency key {run_id}:save) was already "
        "started once and its outcome is unknown, so it is not run again; check the target "
        "for that key.")
    assert calls == [f"{run_id}:save", f"{run_id}:save"]  # the failed call, then one write


def test_an_unresolved_reference_fails_the_step_before_anything_is_sent(
        wf: Callable[..., Path], redis_client: redis.Redis) -> None:
    wf({"workflows": [{"name": "order", "steps": STEPS}]})
    rt = get_runtime()
    workflow = get_workflow(rt, "order")
    run_id = store.create_run(rt.engine, workflow, {"order_id": "A-1"})
    charge: WorkflowStep = workflow.step("charge")
    outcome = run_now(rt, run_id, charge, _start({"validate": {"amount": 1}}, {"order_id": "A-1"}))
    assert outcome.status == "failed"
    assert outcome.error == ("Step 'charge' did not run: The reference '${input.card}' "
                             "cannot be resolved: input has no 'card'.")


def test_a_resolved_request_is_checked_like_an_enqueued_one_and_nothing_is_sent(
        wf: Callable[..., Path], redis_client: redis.Redis) -> None:
    lookup = {"id": "lookup", "type": "api_call",
              "config": {"integration": "payments", "method": "GET",
                         "path": "/orders/${input.order_id}"}}
    wf({"workflows": [{"name": "lookup", "steps": [lookup]}]})
    rt = get_runtime()
    workflow = get_workflow(rt, "lookup")
    run_id = store.create_run(rt.engine, workflow, {"order_id": "../admin"})
    outcome = run_now(rt, run_id, workflow.step("lookup"), _start({}, {"order_id": "../admin"}))
    assert outcome.status == "failed"
    assert outcome.error == ("Step 'lookup' did not run: its request was refused: The path "
                             "'/orders/../admin' was refused: it contains a '.' or '..' "
                             "segment.")
    assert queued(redis_client, rt) == []
    run = store.get_run(rt.engine, run_id)
    assert run is not None and run["steps"][0]["job_id"] is None  # no job was made


def test_callable_steps_return_json_pass_validation_and_keep_their_timeout(
        wf: Callable[..., Path]) -> None:
    here = "tests.integration.test_workflow_edges"
    steps = [{"id": name, "type": kind, "timeout_ms": 200,
              "config": {"callable": f"{here}.{name}", "inputs": {"a": "${input.a}"}}}
             for name, kind in (("add_one", "transformation"), ("not_json", "transformation"),
                                ("refuse", "validation"), ("dawdle", "transformation"))]
    wf({"workflows": [{"name": "calc", "steps": steps}]})
    rt = get_runtime()
    workflow = get_workflow(rt, "calc")
    run_id = store.create_run(rt.engine, workflow, {"a": 41})
    outcomes = {name: run_now(rt, run_id, workflow.step(name), _start({}, {"a": 41}))
                for name in ("add_one", "not_json", "refuse", "dawdle")}
    assert (outcomes["add_one"].status, outcomes["add_one"].output) == ("succeeded",
                                                                        {"total": 42})
    assert outcomes["not_json"].error == (
        "Step 'not_json' failed: its result is not JSON (Object of type set is not JSON "
        "serializable); return plain JSON values.")
    assert outcomes["refuse"].error == "Step 'refuse' failed: the validation returned false."
    assert outcomes["dawdle"].error == "Step 'dawdle' failed: it did not return within 200 ms."
