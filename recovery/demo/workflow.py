"""The demo's workflow phase: the order workflow of examples/workflows.yaml on the local
upstreams, through the demo's real workers.

Three orders: one that goes through (CRM record and notification in parallel), one whose CRM
is down so its run is parked dead and then replayed, resuming at the CRM step without
charging again, and one whose record the order store refuses, so the charge is refunded (the
saga). Every number shown is read back from the runs and the upstreams' request logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from recovery.audit.workflow_models import FINAL_RUN_STATUSES
from recovery.demo.faultserver import FaultServer
from recovery.demo.scenario import DemoError
from recovery.engine.runtime import Runtime
from recovery.engine.workflows.runs import replay_run, start_run
from recovery.engine.workflows.store import get_run

RUN_TIMEOUT_S = 60.0


def order_steps(payments: str, crm: str) -> list[dict[str, Any]]:
    """The steps of examples/workflows.yaml's order workflow, on these integrations."""
    return [
        {"id": "validate", "type": "validation", "timeout_ms": 2000,
         "config": {"callable": "recovery.demo.order.validate_order", "inputs": "${input}"}},
        {"id": "charge", "type": "api_call", "depends_on": ["validate"], "compensate": "refund",
         "config": {"integration": payments, "method": "POST", "path": "/charges",
                    "json": {"order_id": "${input.order_id}",
                             "amount": "${steps.validate.amount}"}}},
        {"id": "crm", "type": "api_call", "depends_on": ["charge"],
         "config": {"integration": crm, "method": "POST", "path": "/contacts",
                    "json": {"email": "${input.email}", "order": "${input.order_id}"}}},
        {"id": "notify", "type": "api_call", "depends_on": ["charge"], "critical": False,
         "config": {"integration": crm, "method": "POST", "path": "/notifications",
                    "json": {"to": "${input.email}",
                             "text": "Order ${input.order_id} is confirmed."}}},
        {"id": "persist", "type": "persistence", "depends_on": ["crm", "notify"],
         "config": {"callable": "recovery.demo.order.save_order",
                    "inputs": {"order": "${input}", "charge": "${steps.charge.body}",
                               "crm": "${steps.crm.body}"}}},
        {"id": "refund", "type": "api_call",
         "config": {"integration": payments, "method": "POST", "path": "/refunds",
                    "json": {"charge": "${steps.charge.body.n}",
                             "order_id": "${input.order_id}"}}},
    ]


def order_workflows(payments: str, crm: str) -> list[dict[str, Any]]:
    """`order` unwinds its saga on a critical failure; `order-parked` parks the run instead."""
    steps = order_steps(payments, crm)
    return [{"name": "order", "steps": steps},
            {"name": "order-parked", "on_failure": "park", "steps": steps}]


def _integration(ident: str, url: str) -> dict[str, Any]:
    return {"id": ident, "base_url": url, "timeout_ms": 2000,
            "retry": {"max_attempts": 2, "initial_delay_ms": 200, "backoff_factor": 2,
                      "max_delay_ms": 1000, "jitter": 0},
            "fallbacks": [], "rate_limit": {"window_ms": 1000, "max_requests": 100}}


class WorkflowDemo:
    """The workflow phase's own integrations (ids under the demo's) and their upstreams,
    apart from the demo's flaky one so the other phases' counts stay their own."""

    def __init__(self, demo_id: str) -> None:
        self.demo_id = demo_id
        self.payments_upstream = FaultServer()
        self.crm_upstream = FaultServer()
        self.runs: dict[str, str] = {}

    def __enter__(self) -> WorkflowDemo:
        self.payments_upstream.start()
        self.crm_upstream.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.payments_upstream.stop()
        self.crm_upstream.stop()

    @property
    def payments(self) -> str:
        return f"{self.demo_id}-payments"

    @property
    def crm(self) -> str:
        return f"{self.demo_id}-crm"

    def add_to(self, integrations_file: Path) -> None:
        """Add the phase's integrations and workflows to the demo's integrations file."""
        document = yaml.safe_load(integrations_file.read_text())
        document["integrations"] += [_integration(self.payments, self.payments_upstream.url),
                                     _integration(self.crm, self.crm_upstream.url)]
        document["workflows"] = order_workflows(self.payments, self.crm)
        integrations_file.write_text(yaml.safe_dump(document, sort_keys=False))


def wait_run(rt: Runtime, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = get_run(rt.engine, run_id)
        if run is not None and run["status"] in FINAL_RUN_STATUSES:
            return run
        time.sleep(0.1)
    raise DemoError(f"Workflow run {run_id} did not finish within {RUN_TIMEOUT_S:.0f} s; check "
                    "that the workers are running.")


def _count(server: FaultServer, path: str) -> int:
    return sum(1 for request in server.requests() if request["path"] == path)


def _steps_line(run: dict[str, Any]) -> str:
    return ", ".join(f"{s['step']} {s['status']}" for s in run["steps"]
                     if s["status"] != "pending")


def phase_workflows(rt: Runtime, demo: WorkflowDemo, say: Callable[[str], None]) -> None:
    order = {"order_id": "A-1", "amount": 2500, "email": "ada@example.test"}
    say("7. Workflow: order A-1 is validated, charged, sent to the CRM and notified in "
        "parallel, then persisted.")
    run = wait_run(rt, start_run(rt, "order", order))
    demo.runs["order"] = run["id"]
    say(f"   -> run {run['status']}: {_steps_line(run)}.")

    say("8. The CRM is down for order A-2 (workflow order-parked): the crm step fails after "
        "its retries and the run is parked dead; the charge stays done.")
    demo.crm_upstream.set_mode("5xx", status=503)
    run = wait_run(rt, start_run(rt, "order-parked", {**order, "order_id": "A-2"}))
    charges = _count(demo.payments_upstream, "/charges")
    say(f"   -> run {run['status']} at step {run['failed_step']}; the CRM is back and the run "
        "is replayed.")
    demo.crm_upstream.set_mode("ok")
    replay_run(rt, run["id"])
    run = wait_run(rt, run["id"])
    demo.runs["replayed"] = run["id"]
    resumed = _count(demo.payments_upstream, "/charges") - charges
    say(f"   -> run {run['status']} after {run['replay_count']} replay; charge calls during the "
        f"replay: {resumed} (finished steps are not run again).")

    say("9. Saga: the order store refuses order A-3; persisting fails, so the charge is "
        "refunded.")
    run = wait_run(rt, start_run(rt, "order", {**order, "order_id": "A-3",
                                               "fail_persist": True}))
    demo.runs["saga"] = run["id"]
    say(f"   -> run {run['status']}: {_steps_line(run)}.")


def workflow_problems(rt: Runtime, demo: WorkflowDemo) -> tuple[dict[str, str], list[str]]:
    """Each run's final status, and what the phase should have shown and did not."""
    statuses = {}
    for label, run_id in demo.runs.items():
        run = get_run(rt.engine, run_id)
        statuses[label] = run["status"] if run is not None else "missing"
    checks = [
        (statuses.get("order") == "succeeded", "The order workflow did not succeed."),
        (statuses.get("replayed") == "succeeded", "The parked run did not succeed on replay."),
        (statuses.get("saga") == "compensated", "The saga run was not compensated."),
        (_count(demo.payments_upstream, "/charges") == 3,
         "An order was charged more than once (or not at all)."),
        (_count(demo.payments_upstream, "/refunds") == 1, "The saga did not refund once."),
    ]
    return statuses, [message for passed, message in checks if not passed]
