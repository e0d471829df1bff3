"""The beat schedule: one health check per integration that has one, plus the capped replay."""

from __future__ import annotations

import importlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery, signals
from celery.beat import Scheduler

import beat_schedule
from recovery.config.loader import load_registry
from recovery.config.registry import Registry
from recovery.config.settings import Settings, load_settings

INTEGRATIONS = [
    {"id": "payments", "base_url": "http://127.0.0.1:9001",
     "health_check": {"endpoint": "/status", "interval_ms": 15000, "timeout_ms": 2000}},
    {"id": "crm", "base_url": "http://127.0.0.1:9002", "health_check": {}},
    {"id": "shipping", "base_url": "http://127.0.0.1:9003"},
]


def setup(tmp_path: Path, **env: str) -> tuple[Registry, Settings]:
    path = tmp_path / "integrations.yaml"
    path.write_text(yaml.safe_dump({"integrations": INTEGRATIONS}))
    environ = {"RECOVERY_INTEGRATIONS": str(path), "HEALTH_CHECK_INTERVAL": "40000", **env}
    settings = load_settings(environ)
    return load_registry(settings, environ), settings


def test_each_integration_with_a_health_check_gets_an_entry_at_its_interval(
    tmp_path: Path,
) -> None:
    registry, settings = setup(tmp_path)

    schedule = beat_schedule.build_schedule(registry, settings)

    assert schedule["health-check:payments"] == {
        "task": "tasks.health.check", "schedule": timedelta(seconds=15),
        "args": ("payments",), "options": {"expires": 15.0}}
    assert schedule["health-check:crm"]["schedule"] == timedelta(seconds=40)
    assert "health-check:shipping" not in schedule


def test_dlq_replay_runs_every_dlq_retry_delay_when_enabled(tmp_path: Path) -> None:
    registry, settings = setup(tmp_path, DLQ_RETRY_DELAY="120000")

    entry = beat_schedule.build_schedule(registry, settings)["dlq-replay"]

    assert entry["task"] == "tasks.dlq.replay"
    assert entry["schedule"] == timedelta(seconds=120)
    assert entry["options"] == {"expires": 120.0}


@pytest.mark.parametrize("env", [{"DLQ_ENABLED": "false"}, {"ENABLE_AUTO_RECOVERY": "false"}])
def test_no_dlq_replay_without_the_dlq_or_auto_recovery(tmp_path: Path,
                                                       env: dict[str, str]) -> None:
    registry, settings = setup(tmp_path, **env)

    schedule = beat_schedule.build_schedule(registry, settings)

    assert "dlq-replay" not in schedule
    assert "health-check:payments" in schedule


def test_the_environment_only_primary_api_is_checked_at_health_check_interval() -> None:
    environ = {"HEALTH_CHECK_INTERVAL": "5000"}
    settings = load_settings(environ)

    schedule = beat_schedule.build_schedule(load_registry(settings, environ), settings)

    assert schedule["health-check:primary-api"]["schedule"] == timedelta(seconds=5)
    assert schedule["health-check:primary-api"]["args"] == ("primary-api",)


def test_celery_beat_accepts_the_schedule(tmp_path: Path) -> None:
    registry, settings = setup(tmp_path)
    app = Celery("schedule-test", set_as_current=False)
    app.conf.beat_schedule = beat_schedule.build_schedule(registry, settings)

    scheduler = Scheduler(app, lazy=True)
    scheduler.setup_schedule()

    entry = scheduler.schedule["health-check:payments"]
    assert entry.schedule.run_every == timedelta(seconds=15)
    assert entry.args == ("payments",)
    assert entry.options["expires"] == 15.0


def test_every_scheduled_task_is_a_task_of_the_real_app() -> None:
    from recovery.celery_app import TASK_MODULES, app

    for module in TASK_MODULES:
        importlib.import_module(module)
    names = {entry["task"] for entry in beat_schedule.beat_schedule.values()}

    assert names
    assert names <= set(app.tasks)


def test_beat_loads_the_registrys_schedule_through_the_apps_scheduler(tmp_path: Path) -> None:
    """`celery -A recovery.celery_app beat` takes `beat_scheduler` from the app (no `-S`):
    its scheduler sets the schedule up from the registry when beat starts."""
    from celery.utils.imports import symbol_by_name

    from recovery.celery_app import app

    scheduler = symbol_by_name(app.conf.beat_scheduler)(
        app=app, schedule_filename=str(tmp_path / "schedule"))
    try:
        assert isinstance(scheduler, beat_schedule.Scheduler)
        assert set(beat_schedule.beat_schedule) <= set(scheduler.schedule)
        entry = scheduler.schedule["health-check:primary-api"]
        assert (entry.task, entry.args) == ("tasks.health.check", ("primary-api",))
    finally:
        scheduler.close()


def test_importing_the_schedule_guards_beat_against_a_second_instance() -> None:
    uids = [key[0] for key, _ in signals.beat_init.receivers]

    assert "recovery-beat-lock" in uids


def test_module_schedule_is_built_from_the_process_registry() -> None:
    from recovery.config.loader import get_registry
    from recovery.config.settings import get_settings

    expected: dict[str, Any] = beat_schedule.build_schedule(get_registry(), get_settings())

    assert beat_schedule.beat_schedule == expected
