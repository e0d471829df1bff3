"""Workflow definitions: bad files refused at load with a sentence naming file, workflow, step
and key; the Python builder; references resolved before a step runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from recovery.config.workflow_file import load_file, load_workflows, parse_workflows
from recovery.config.workflows import WorkflowBuilder, WorkflowError
from recovery.engine.workflows.refs import UnresolvedReference, resolve

CHECK = "recovery.demo.order.validate_order"
WHERE = "/etc/wf.yaml: workflow 'order': step 'a': "


def check(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "validation", "config": {"callable": CHECK}, **extra}


BAD_FILES = [
    ([check("a", depends_on=["b"]), check("b", depends_on=["a"])],
     WHERE + "key 'depends_on' forms a cycle (a -> b -> a); a workflow must be a directed "
     "acyclic graph."),
    ([check("a", depends_on=["zz"])],
     WHERE + "key 'depends_on' names an unknown step 'zz' (steps: a)."),
    ([{"id": "a", "type": "validation", "config": {"callable": "recovery.demo.order.nope"}}],
     WHERE + "key 'config.callable' cannot be imported (module 'recovery.demo.order' has no "
     "callable 'nope'); install the module or fix the name."),
    ([{"id": "a", "type": "validation", "config": {"callable": "shop.nowhere.check"}}],
     WHERE + "key 'config.callable' cannot be imported (No module named 'shop'); install the "
     "module or fix the name."),
    ([{"id": "a", "type": "validation", "config": {"callable": CHECK, "inputs": "${steps.b.x}"}},
      check("b")],
     WHERE + "key 'config.inputs' references '${steps.b.x}' but 'b' is not a step this one "
     "depends on, so its output may not exist yet; add it to depends_on or fix the name."),
    ([{"id": "a", "type": "validation", "config": {"callable": CHECK, "inputs": "${steps.q}"}}],
     WHERE + "key 'config.inputs' references '${steps.q}' but 'q' is not a step; add it to "
     "depends_on or fix the name."),
    ([{"id": "a", "type": "validation", "config": {"callable": CHECK, "inputs": "${inputs.x}"}}],
     WHERE + "key 'config.inputs' has a bad reference '${inputs.x}'; write ${input.NAME} or "
     "${steps.STEP.FIELD}."),
    ([{"id": "a", "type": "email", "config": {}}],
     WHERE + "key 'type' must be one of api_call, validation, transformation, persistence, got "
     "'email'."),
    ([{"id": "a", "type": "api_call", "config": {"integration": "nope", "method": "GET",
                                                 "path": "/x"}}],
     WHERE + "key 'config.integration' names an unknown integration 'nope' (known: payments)."),
    ([{"id": "a", "type": "api_call", "config": {"integration": "payments", "path": "/x"}}],
     WHERE + "key 'config.method' is required for an api_call step (a string)."),
    ([check("a"), check("a")], WHERE + "key 'id' is used by two steps; give each step its own id."),
    ([check("a", retries=3)],
     WHERE + "unknown key 'retries' (known keys: compensate, config, critical, depends_on, id, "
     "name, timeout_ms, type)."),
    ([check("a", compensate="undo")], WHERE + "key 'compensate' names an unknown step 'undo'."),
    ([check("a", timeout_ms=0)], WHERE + "key 'timeout_ms' must be from 1 to 3600000 ms, got 0."),
    ([check("a", compensate="b"), check("b", depends_on=["a"])],
     "/etc/wf.yaml: workflow 'order': step 'b': key 'depends_on' must be empty on an undo step "
     "(it runs when the saga unwinds, after the step it undoes)."),
    ([check("a"), check("c", depends_on=["u"]), check("x", compensate="u"), check("u")],
     "/etc/wf.yaml: workflow 'order': step 'c': key 'depends_on' names 'u', an undo step, "
     "which only runs as a compensation."),
]


def test_an_unknown_on_failure_is_refused() -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflows([{"name": "order", "on_failure": "retry", "steps": [check("a")]}],
                        "/etc/wf.yaml", [])
    assert str(caught.value) == ("/etc/wf.yaml: workflow 'order': key 'on_failure' must be one "
                                 "of compensate, park, got 'retry'.")


@pytest.mark.parametrize(("steps", "sentence"), BAD_FILES)
def test_bad_workflows_are_refused_with_a_sentence(steps: list[Any], sentence: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflows([{"name": "order", "steps": steps}], "/etc/wf.yaml", ["payments"])
    assert str(caught.value) == sentence


def test_a_file_with_an_unknown_top_level_key_or_a_duplicate_workflow_is_refused(
        tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"workflows": [], "flows": []}))
    with pytest.raises(WorkflowError, match=r"unknown top-level key 'flows' \(known keys: "
                                            r"workflows\)\.$"):
        load_file(str(path), [])
    one = {"name": "order", "steps": [check("a")]}
    path.write_text(yaml.safe_dump({"workflows": [one, one]}))
    with pytest.raises(WorkflowError) as caught:
        load_file(str(path), [])
    assert str(caught.value) == (f"{path}: workflow 'order' is defined twice; give each "
                                 "workflow its own name.")


def test_workflows_beside_the_integrations_and_in_their_own_file_are_merged(
        tmp_path: Path) -> None:
    beside = tmp_path / "integrations.yaml"
    beside.write_text(yaml.safe_dump({"integrations": [], "workflows": [
        {"name": "one", "steps": [check("a")]}]}))
    own = tmp_path / "workflows.yaml"
    own.write_text(yaml.safe_dump({"workflows": [{"name": "two", "steps": [check("a")]}]}))
    found = load_workflows(str(beside), str(own), ())
    assert sorted(found) == ["one", "two"]
    own.write_text(yaml.safe_dump({"workflows": [{"name": "one", "steps": [check("b")]}]}))
    with pytest.raises(WorkflowError) as caught:
        load_workflows(str(beside), str(own), ("x",))
    assert str(caught.value) == (f"{own}: workflow 'one' is also defined in {beside}; define "
                                 "it once.")


def test_the_builder_validates_like_the_file() -> None:
    workflow = (WorkflowBuilder("order")
                .validation("validate", CHECK, inputs="${input}")
                .api_call("charge", "payments", "POST", "/charges", depends_on=["validate"],
                          json={"amount": "${steps.validate.amount}"}, compensate="refund")
                .api_call("refund", "payments", "POST", "/refunds",
                          json={"charge": "${steps.charge.body.id}"})
                .build(integrations=["payments"]))
    assert [s.id for s in workflow.forward_steps] == ["validate", "charge"]
    assert workflow.undo_steps == frozenset({"refund"})
    with pytest.raises(WorkflowError, match=r"^python: workflow 'w': step 'b': key "
                                            r"'depends_on' forms a cycle \(b -> b\)"):
        WorkflowBuilder("w").transformation("b", CHECK, depends_on=["b"]).build()


def test_references_resolve_to_values_or_fail_with_a_sentence() -> None:
    context = {"input": {"order_id": "A-1", "items": [{"sku": "x"}]},
               "steps": {"charge": {"body": {"id": 42}}}}
    config = {"amount": "${steps.charge.body.id}", "text": "Order ${input.order_id} paid",
              "sku": "${input.items.0.sku}", "nested": ["${input.order_id}"]}
    assert resolve(config, context) == {"amount": 42, "text": "Order A-1 paid", "sku": "x",
                                        "nested": ["A-1"]}
    with pytest.raises(UnresolvedReference) as caught:
        resolve({"x": "${steps.charge.body.missing}"}, context)
    assert str(caught.value) == ("The reference '${steps.charge.body.missing}' cannot be "
                                 "resolved: steps.charge.body has no 'missing'.")
    with pytest.raises(UnresolvedReference) as caught:
        resolve("${steps.crm.body}", context)
    assert str(caught.value) == ("The reference '${steps.crm.body}' cannot be resolved: step "
                                 "'crm' has no output (it did not succeed).")


def test_the_example_file_is_the_demo_workflow_and_loads_against_the_example_integrations(
) -> None:
    from recovery.demo.workflow import order_workflows

    repo = Path(__file__).resolve().parents[2]
    example = load_file(str(repo / "examples" / "workflows.yaml"), ["payments", "crm"])
    demo = parse_workflows(order_workflows("payments", "crm"), "demo", ["payments", "crm"])
    assert sorted(example) == sorted(demo) == ["order", "order-parked"]
    for name, workflow in example.items():
        assert (workflow.steps, workflow.on_failure) == (demo[name].steps, demo[name].on_failure)
    assert example["order"].undo_steps == frozenset({"refund"})


def test_the_readme_examples_are_the_example_file_and_a_valid_builder() -> None:
    import re

    repo = Path(__file__).resolve().parents[2]
    section = (repo / "README.md").read_text().split("## Workflows", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    shown = parse_workflows(yaml.safe_load(block.group(1))["workflows"], "README",
                            ["payments", "crm"])
    example = load_file(str(repo / "examples" / "workflows.yaml"), ["payments", "crm"])
    assert shown["order"].steps == example["order"].steps
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)  # the builder example runs and validates
    assert [step.id for step in scope["order"].steps] == ["validate", "charge", "refund"]
