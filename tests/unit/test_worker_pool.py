"""Issue 13: workers wait on threads by default, and maintenance has a queue of its own."""

from __future__ import annotations

import os

import pytest

from recovery.celery_app import (
    MAINTENANCE_QUEUE,
    TASK_MODULES,
    WORK_QUEUE,
    app,
    celery_config,
)
from recovery.config.settings import SettingsError, load_settings


def error_for(**env: str) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    return str(caught.value)


def test_a_worker_runs_64_threads_by_default() -> None:
    settings = load_settings({})
    config = celery_config(settings)
    assert (settings.worker_pool, settings.worker_concurrency) == ("threads", 64)
    assert (config["worker_pool"], config["worker_concurrency"]) == ("threads", 64)
    assert config["worker_prefetch_multiplier"] == 1 and config["task_acks_late"] is True


def test_worker_concurrency_and_pool_are_read_from_the_environment() -> None:
    settings = load_settings({"WORKER_POOL": " Prefork ", "WORKER_CONCURRENCY": "3"})
    assert (settings.worker_pool, settings.worker_concurrency) == ("prefork", 3)
    assert celery_config(settings)["worker_pool"] == "prefork"


def test_a_process_pool_defaults_to_one_process_per_core_not_64() -> None:
    assert load_settings({"WORKER_POOL": "prefork"}).worker_concurrency == (os.cpu_count() or 1)
    assert load_settings({"WORKER_POOL": "solo"}).worker_concurrency == (os.cpu_count() or 1)


@pytest.mark.parametrize(("env", "message"), [
    ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY must be at least 1, got '0'."),
    ({"WORKER_CONCURRENCY": "-4"}, "WORKER_CONCURRENCY must be at least 1, got '-4'."),
    ({"WORKER_CONCURRENCY": "many"}, "WORKER_CONCURRENCY must be a whole number, got 'many'."),
    ({"WORKER_CONCURRENCY": "6.5"}, "WORKER_CONCURRENCY must be a whole number, got '6.5'."),
    ({"WORKER_CONCURRENCY": "1025"},
     "WORKER_CONCURRENCY must be at most 1024, got '1025'; a value this large is almost "
     "certainly a mistake."),
    ({"WORKER_POOL": "gevent"},
     "WORKER_POOL must be one of threads, prefork, solo, got 'gevent'."),
    ({"WORKER_POOL": "eventlet"},
     "WORKER_POOL must be one of threads, prefork, solo, got 'eventlet'."),
    ({"WORKER_POOL": " "}, "WORKER_POOL must not be empty; unset it to use 'threads'."),
])
def test_bad_worker_settings_are_refused_with_a_sentence(env: dict[str, str],
                                                         message: str) -> None:
    assert error_for(**env) == message


def test_health_checks_and_the_replay_route_to_the_maintenance_queue() -> None:
    """A backlog in `integrations` never delays them: `-Q maintenance` runs only these."""
    app.loader.import_default_modules()  # the `include` list, as a worker imports it
    router = app.amqp.router
    for name in ("tasks.health.check", "tasks.dlq.replay"):
        assert name in app.tasks, f"{name} is not registered"
        assert router.route({}, name)["queue"].name == MAINTENANCE_QUEUE
    for name in ("tasks.integration.call", "tasks.workflow.step"):
        assert router.route({}, name)["queue"].name == WORK_QUEUE
    maintenance = {name for name in app.tasks if not name.startswith("celery.")
                   and router.route({}, name)["queue"].name == MAINTENANCE_QUEUE}
    assert maintenance == {"tasks.health.check", "tasks.dlq.replay"}
    assert set(TASK_MODULES) == {"tasks.integration", "tasks.health", "tasks.dlq",
                                 "tasks.workflow"}


def worker_commands() -> dict[str, list[str]]:
    """Every `celery ... worker` command in deploy/ and the README, by where it is."""
    import re
    import shlex
    from pathlib import Path

    from tests.unit.test_deploy_files import REPO, compose, procfile, unit_commands

    found = {f"Procfile {name}": argv for name, argv in procfile().items()}
    found |= {f"compose {name}": service["command"]
              for name, service in compose()["services"].items() if service.get("command")}
    found |= {f"{unit} {key}": argv for unit, key, argv in unit_commands()}
    readme = (REPO / "README.md").read_text()
    for number, line in enumerate(re.findall(r"^celery -A .*$", readme, re.M)):
        found[f"README line {number}"] = shlex.split(line.split("#")[0])
    assert Path(REPO / "deploy").is_dir()
    return {where: argv for where, argv in found.items() if "worker" in argv}


def option(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg in names:
            return argv[index + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def test_every_documented_worker_runs_one_queue_on_threads() -> None:
    """Jobs on the default thread pool at its default size; maintenance small and apart."""
    commands = worker_commands()
    queues = {where: option(argv, "-Q", "--queues") for where, argv in commands.items()}
    assert set(queues.values()) == {WORK_QUEUE, MAINTENANCE_QUEUE}, queues
    for where, argv in commands.items():
        assert option(argv, "-P", "--pool") is None, f"{where}: the pool is WORKER_POOL's"
        concurrency = option(argv, "-c", "--concurrency")
        if queues[where] == WORK_QUEUE:
            assert concurrency is None, f"{where}: jobs take WORKER_CONCURRENCY threads"
        else:
            assert concurrency == "2", f"{where}: the maintenance worker is small"
    places = {where.split()[0] for where in commands}
    assert {"Procfile", "compose", "README"} <= places
    assert any(where.startswith("api-recovery-maintenance.service") for where in commands)


def test_messages_built_by_hand_carry_every_field_as_asdict_would() -> None:
    """`to_message` skips `asdict`'s deep copy (producer CPU); a field added later must not be
    left out of the message."""
    from dataclasses import asdict

    from recovery.core.message import JobSpec, Progress

    job = JobSpec("j1", "shop", "POST", "/orders", json={"a": [1, {"b": 2}]},
                  params={"page": 2}, headers={"X-Team": "t"}, idempotency_key="k",
                  enqueued_at="2026-12-05T00:00:00+00:00", replay_count=2)
    message = job.to_message()
    assert message == asdict(job)
    assert message["headers"] is not job.headers and message["params"] is not job.params
    assert JobSpec.from_message(message) == job
    progress = Progress(attempt=3, deferrals=1, blocked_s=2.5, auth_refreshed=True,
                        recovered_by="cache", budget_pending=True, requeues=1)
    assert progress.to_message() == asdict(progress)
    assert Progress.from_message(progress.to_message()) == progress


def test_the_stress_tests_leak_check_catches_a_line_with_another_jobs_id() -> None:
    """tests/integration/test_thread_pool.py must be able to fail: a line whose `job_id` is
    not the job its text names (by path or by task id) is reported."""
    from tests.integration.test_thread_pool import leaked_lines

    ids = ["3f1c0b7e-1d2f-4b7a-9a35-0c1c2f3e4d5a", "9a8b7c6d-1d2f-4b7a-9a35-0c1c2f3e4d5a"]
    good = [{"job_id": ids[0], "event": 'http://h:1 "GET /stress/0 HTTP/1.1" 200 2'},
            {"job_id": ids[1], "event": f"Task tasks.integration.call[{ids[1]}] retry"},
            {"event": f"Task tasks.integration.call[{ids[0]}] received"}]
    assert leaked_lines(good, ids) == (2, [])
    bad = [{"job_id": ids[1], "event": 'http://h:1 "GET /stress/0 HTTP/1.1" 200 2'},
           {"job_id": ids[0], "event": f"Task tasks.integration.call[{ids[1]}] retry"}]
    checked, leaks = leaked_lines(bad, ids)
    assert checked == 2 and len(leaks) == 2


def test_each_origins_connection_pool_keeps_one_connection_per_job_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3 throws away a connection returned to a full pool: with 64 threads and a pool of
    10, most calls would open a new connection (and log a warning)."""
    from recovery.config.settings import reset_settings
    from recovery.engine import http

    for threads, expected in (("256", 256), ("4", http.POOL_SIZE)):
        monkeypatch.setenv("WORKER_CONCURRENCY", threads)
        reset_settings()
        http.close_sessions()
        adapter = http.session_for("https://pool.example.test/").get_adapter(
            "https://pool.example.test/")
        assert adapter.poolmanager.connection_pool_kw["maxsize"] == expected  # type: ignore[attr-defined]
    http.close_sessions()
    monkeypatch.delenv("WORKER_CONCURRENCY")
    reset_settings()


def test_producers_send_task_sent_events_unless_told_not_to() -> None:
    assert celery_config(load_settings({}))["task_send_sent_event"] is True
    quiet = load_settings({"TASK_SENT_EVENTS": "false"})
    assert celery_config(quiet)["task_send_sent_event"] is False
    assert error_for(TASK_SENT_EVENTS="sometimes") == (
        "TASK_SENT_EVENTS must be true or false (1/0 and yes/no also work), got 'sometimes'.")
