"""`tasks.workflow.step` sends a step's next delivery the way the integration task sends a job's:
on RabbitMQ a countdown under one second waits one second (kombu's delayed delivery counts
whole seconds), on Redis it is kept as it is."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import tasks.workflow as workflow_task
from recovery.config.settings import load_settings
from recovery.core.message import Progress
from recovery.engine.workflows.execute import Again


class _Task:
    def __init__(self) -> None:
        self.countdowns: list[float | None] = []

    def retry(self, **options: Any) -> Exception:
        self.countdowns.append(options["countdown"])
        return RuntimeError("retried")


@pytest.mark.parametrize(("broker", "sent"), [
    ("amqp://guest:guest@127.0.0.1:5672//", 1.0),
    ("redis://127.0.0.1:6379/0", 0.3),
])
def test_a_step_asking_for_another_delivery_is_sent_with_the_brokers_countdown(
        monkeypatch: pytest.MonkeyPatch, broker: str, sent: float) -> None:
    settings = load_settings({"BROKER_URL": broker})
    step = SimpleNamespace(id="charge")
    monkeypatch.setattr(workflow_task, "get_settings", lambda: settings)
    monkeypatch.setattr(workflow_task, "get_runtime", lambda: SimpleNamespace(engine=None))
    monkeypatch.setattr(workflow_task.store, "start_step",
                        lambda engine, run_id, step_id: SimpleNamespace(workflow="order"))
    monkeypatch.setattr(workflow_task, "get_workflow",
                        lambda runtime, name: SimpleNamespace(step=lambda step_id: step))
    monkeypatch.setattr(workflow_task, "run_step",
                        lambda *args: Again(countdown_s=0.3, progress=Progress()))
    monkeypatch.setattr(workflow_task, "step_reprs", lambda *args: {})
    task = _Task()
    with pytest.raises(RuntimeError, match="retried"):
        workflow_task._run(task, "run-1", "charge", None)  # type: ignore[arg-type]
    assert task.countdowns == [sent]
