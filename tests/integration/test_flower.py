"""Flower against a real worker: tasks appear with readable names and redacted arguments.

One module-wide run: a worker, Flower behind basic auth, and jobs carrying secrets (a bearer
token, an API key, a `token` query parameter, a `password` body field) that fail once with 503
and succeed on their Celery retry, then one more that the upstream refuses with 400 and that is
dead-lettered. Flower's API, its pages and headless Chromium must show the tasks (the dead one
as FAILURE) and never a secret, including while the retries wait in the worker's ETA schedule.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests
import yaml

import recovery
from recovery.config.loader import reset_registry
from recovery.config.settings import reset_settings
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime, reset_runtime
from tests.integration import _chromium
from tests.integration._process import stop_group
from tests.integration.conftest import ADMIN_DSN, REPO, WorkerProcess, wait_for_status
from tests.integration.test_job_flow import integration

pytestmark = pytest.mark.integration

TASK_NAME = "tasks.integration.call"
ARTIFACTS = REPO / "test-artifacts"
RETRY_DELAY_MS = 3000
JOBS = 2


class FlowerProcess:
    """`celery flower` as a subprocess with basic auth, stopped and reaped at teardown."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = _free_port()
        self.auth = ("ops", secrets.token_urlsafe(12))
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [
            sys.executable, "-m", "celery", "-A", "recovery.celery_app", "flower",
            f"--port={self.port}", "--address=127.0.0.1", f"--basic-auth={':'.join(self.auth)}",
            "--inspect_timeout=3000",
        ]
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /healthcheck until Flower answers; it takes a few seconds to start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.base}/healthcheck", timeout=2).text == "OK":
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"Flower did not answer on {self.base} within {timeout} s:\n"
                           f"{self.log()}")

    def get(self, path: str, **params: Any) -> requests.Response:
        response = requests.get(self.base + path, params=params, auth=self.auth, timeout=15)
        response.raise_for_status()
        return response

    def browser_url(self, path: str) -> str:
        """A URL with the credentials in it: how headless Chromium passes basic auth."""
        user, password = self.auth
        return f"http://{user}:{password}@127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        stop_group(self.process, grace_s=15)
        self._log.close()


@dataclass
class FlowerRun:
    """What the module's tests inspect: Flower, the jobs, their secrets, what was seen live."""

    flower: FlowerProcess
    upstream: FaultServer
    worker_log: Path
    worker_name: str
    job_ids: list[str]
    secret_values: list[str]
    dead_job_id: str = ""
    seen: dict[str, str] = field(default_factory=dict)  # "GET path" -> body, while retrying
    scheduled_seen: int = 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _admin(sql: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)


def _job_arguments(n: int) -> tuple[dict[str, Any], list[str]]:
    """enqueue() keyword arguments for job `n` and the secret values they carry."""
    bearer, api_key, token, password = (f"SECRET-{kind}-{n}-{uuid.uuid4().hex}"
                                        for kind in ("bearer", "apikey", "token", "password"))
    arguments = {
        "headers": {"Authorization": f"Bearer {bearer}", "X-Api-Key": api_key},
        "params": {"token": token, "page": str(n)},
        "json": {"password": password, "item": f"book-{n}"},
    }
    return arguments, [bearer, api_key, token, password]


def _enqueue_jobs(upstream: FaultServer) -> tuple[list[str], list[str]]:
    upstream.set_script([503] * JOBS)
    job_ids, secret_values = [], []
    for n in range(JOBS):
        arguments, values = _job_arguments(n)
        job_ids.append(recovery.enqueue("shop", "POST", f"/orders/{n}", **arguments))
        secret_values += values
    return job_ids, secret_values


def _worker_name(flower: FlowerProcess, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = list(flower.get("/api/workers", refresh=1).json())
        if names:
            return names[0]
        time.sleep(0.5)
    raise AssertionError(f"Flower listed no worker within {timeout} s:\n{flower.log()}")


def _watch_retries(run: FlowerRun) -> None:
    """While the retries wait in the worker's ETA schedule, record what Flower shows of them."""
    deadline = time.monotonic() + RETRY_DELAY_MS / 1000 + 5
    while time.monotonic() < deadline and run.scheduled_seen < JOBS:
        api = run.flower.get("/api/workers", refresh=1, workername=run.worker_name)
        page = run.flower.get(f"/worker/{run.worker_name}")
        stamp = f"{time.monotonic():.1f}"
        run.seen[f"GET /api/workers?workername=... at {stamp}"] = api.text
        run.seen[f"GET /worker/... at {stamp}"] = page.text
        scheduled = api.json()[run.worker_name].get("scheduled") or []
        run.scheduled_seen = max(run.scheduled_seen, len(scheduled))
        time.sleep(0.3)


def _wait_for_flower_tasks(run: FlowerRun, timeout: float = 30.0) -> dict[str, Any]:
    """Flower's /api/tasks once every job is SUCCESS there (its events can lag the audit)."""
    deadline = time.monotonic() + timeout
    tasks: dict[str, Any] = {}
    while time.monotonic() < deadline:
        tasks = run.flower.get("/api/tasks", taskname=TASK_NAME).json()
        if all(tasks.get(job_id, {}).get("state") == "SUCCESS" for job_id in run.job_ids):
            return tasks
        time.sleep(0.3)
    raise AssertionError(f"Flower did not show every job as SUCCESS in {timeout} s: {tasks}")


def _wait_for_flower_state(run: FlowerRun, job_id: str, state: str,
                           timeout: float = 30.0) -> dict[str, Any]:
    """Flower's /api/tasks?state=... once it lists the job (its events can lag the audit)."""
    deadline = time.monotonic() + timeout
    tasks: dict[str, Any] = {}
    while time.monotonic() < deadline:
        tasks = run.flower.get("/api/tasks", taskname=TASK_NAME, state=state).json()
        if job_id in tasks:
            return tasks
        time.sleep(0.3)
    raise AssertionError(f"Flower did not list job {job_id} as {state} in {timeout} s: {tasks}")


def _dead_letter_one(run: FlowerRun) -> None:
    """One more job, carrying secrets too, that the upstream refuses with 400: dead-lettered."""
    arguments, values = _job_arguments(JOBS)
    run.upstream.set_script([400])
    run.dead_job_id = recovery.enqueue("shop", "POST", f"/refunds/{JOBS}", **arguments)
    run.secret_values += values
    job = wait_for_status(get_runtime().engine, run.dead_job_id, {"succeeded", "failed", "dead"})
    assert job["status"] == "dead", job


def _start_services(
    mp: pytest.MonkeyPatch, tmp: Path, database_url: str, upstream: FaultServer
) -> dict[str, str]:
    entry = integration(upstream.url, audit={"show_body_fields": ["item"]})  # shown in Flower
    entry["retry"] = dict(entry["retry"], initial_delay_ms=RETRY_DELAY_MS)
    integrations = tmp / "integrations.yaml"
    integrations.write_text(yaml.safe_dump({"integrations": [entry]}))
    mp.setenv("DATABASE_URL", database_url)
    mp.setenv("RECOVERY_INTEGRATIONS", str(integrations))
    reset_settings()
    reset_registry()
    reset_runtime()
    return dict(os.environ)


def _clean_redis() -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    prefix = os.environ["RECOVERY_REDIS_PREFIX"]
    keys = set(client.scan_iter(match=f"*{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _run_jobs(flower: FlowerProcess, upstream: FaultServer, worker_log: Path) -> FlowerRun:
    worker_name = _worker_name(flower)
    job_ids, secret_values = _enqueue_jobs(upstream)
    run = FlowerRun(flower, upstream, worker_log, worker_name, job_ids, secret_values)
    _watch_retries(run)
    engine = get_runtime().engine
    for job_id in job_ids:
        job = wait_for_status(engine, job_id, {"succeeded", "failed", "dead"})
        assert job["status"] == "succeeded", job
    _dead_letter_one(run)
    return run


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerRun]:
    """A worker, Flower and JOBS finished jobs that each went 503 -> retry -> 200."""
    from recovery.audit.db import upgrade

    tmp = tmp_path_factory.mktemp("flower")
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin(f'CREATE DATABASE "{name}"')
    stops: list[Callable[[], None]] = []
    try:
        with pytest.MonkeyPatch.context() as mp:
            database_url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
            upgrade(database_url)
            upstream = FaultServer().start()
            stops.append(upstream.stop)
            env = _start_services(mp, tmp, database_url, upstream)
            # task events are off by default: Flower must switch them on (enable_events)
            stops.append(WorkerProcess(env, 2, tmp / "worker.log", None, heartbeat=True).stop)
            flower = FlowerProcess(env, tmp / "flower.log")
            stops.append(flower.stop)
            flower.wait_ready()
            yield _run_jobs(flower, upstream, tmp / "worker.log")
    finally:
        for stop in reversed(stops):
            stop()
        reset_settings()
        reset_registry()
        reset_runtime()
        _clean_redis()
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _leaks(run: FlowerRun, bodies: dict[str, str]) -> list[str]:
    return [f"{where} shows {secret!r}" for where, body in bodies.items()
            for secret in run.secret_values if secret in body]


def test_secrets_really_reached_the_upstream(flower_run: FlowerRun) -> None:
    """The jobs did carry their secrets to the upstream, so their absence below means something.

    The fault server records headers and query strings, not bodies: the password is not checked.
    """
    sent = repr(flower_run.upstream.requests())
    carried = [s for s in flower_run.secret_values if not s.startswith("SECRET-password-")]
    assert len(carried) == 3 * (JOBS + 1)
    assert all(secret in sent for secret in carried)
    orders = [r for r in flower_run.upstream.requests() if r["path"].startswith("/orders/")]
    assert sorted(r["status"] for r in orders) == [200] * JOBS + [503] * JOBS


def test_flower_api_lists_tasks_by_name_with_redacted_arguments(flower_run: FlowerRun) -> None:
    tasks = _wait_for_flower_tasks(flower_run)
    for n, job_id in enumerate(flower_run.job_ids):
        task = tasks[job_id]
        assert task["name"] == TASK_NAME
        assert task["args"] == "()"
        kwargs = task["kwargs"]
        assert "[REDACTED]" in kwargs and f"/orders/{n}" in kwargs and f"book-{n}" in kwargs
        # The retried message's own repr (attempt 2) reached Flower, not only the first one.
        assert "'attempt': 2" in kwargs, kwargs
        assert task["retries"] == 1
        assert task["worker"] == flower_run.worker_name
    types = flower_run.flower.get("/api/task/types").json()
    assert TASK_NAME in types["task-types"]


def test_no_secret_in_any_flower_api_response(flower_run: FlowerRun) -> None:
    flower = flower_run.flower
    bodies = {"GET /api/tasks": flower.get("/api/tasks").text,
              "GET /api/workers?refresh=1": flower.get("/api/workers", refresh=1).text,
              "GET /api/workers (one worker, refreshed)": flower.get(
                  "/api/workers", refresh=1, workername=flower_run.worker_name).text}
    for job_id in [*flower_run.job_ids, flower_run.dead_job_id]:
        bodies[f"GET /api/task/info/{job_id}"] = flower.get(f"/api/task/info/{job_id}").text
        bodies[f"GET /task/{job_id}"] = flower.get(f"/task/{job_id}").text
    assert flower_run.worker_name in bodies["GET /api/workers?refresh=1"]
    leaks = _leaks(flower_run, bodies)
    assert not leaks, "\n".join(leaks)


def test_no_secret_while_retries_wait_in_the_worker_schedule(flower_run: FlowerRun) -> None:
    """Flower's worker view inspects `scheduled` and `reserved`: the raw job must not show."""
    assert flower_run.scheduled_seen >= 1, "no retry was seen waiting in the worker's schedule"
    leaks = _leaks(flower_run, flower_run.seen)
    assert not leaks, "\n".join(leaks)


def test_no_secret_in_worker_or_flower_logs(flower_run: FlowerRun) -> None:
    logs = {"the worker log": flower_run.worker_log.read_text(errors="replace"),
            "the Flower log": flower_run.flower.log_path.read_text(errors="replace")}
    assert all(job_id in logs["the worker log"] for job_id in flower_run.job_ids)
    leaks = _leaks(flower_run, logs)
    assert not leaks, "\n".join(leaks)


def test_flower_shows_the_dead_lettered_job_as_failure(flower_run: FlowerRun) -> None:
    """Dead jobs end as Celery FAILURE (after they are parked); Flower learns it from the
    task-failed event, as results are not stored. The exception shows the redacted outcome."""
    failed = _wait_for_flower_state(flower_run, flower_run.dead_job_id, "FAILURE")
    assert list(failed) == [flower_run.dead_job_id]
    task = failed[flower_run.dead_job_id]
    assert task["exception"].startswith(
        "JobDeadLettered('dead, HTTP 400, dead-letter-queue: "), task["exception"]
    assert task["retries"] == 0
    succeeded = flower_run.flower.get("/api/tasks", taskname=TASK_NAME, state="SUCCESS").json()
    assert set(flower_run.job_ids) <= set(succeeded)
    assert flower_run.dead_job_id not in succeeded
    refunds = [r for r in flower_run.upstream.requests() if r["path"].startswith("/refunds/")]
    assert [r["status"] for r in refunds] == [400], "the failed task was delivered again"


def test_task_page_html_names_the_task(flower_run: FlowerRun) -> None:
    _wait_for_flower_tasks(flower_run)
    job_id = flower_run.job_ids[0]
    page = flower_run.flower.get(f"/task/{job_id}").text
    assert TASK_NAME in page and job_id in page and "[REDACTED]" in page


@pytest.mark.skipif(not _chromium.available(), reason=_chromium.MISSING_REASON)
def test_chromium_renders_the_tasks_page(flower_run: FlowerRun) -> None:
    _wait_for_flower_tasks(flower_run)
    url = flower_run.flower.browser_url("/tasks")
    dom = _chromium.dump_dom(url)
    assert TASK_NAME in dom, dom[-3000:]
    assert all(job_id in dom for job_id in flower_run.job_ids)
    assert not _leaks(flower_run, {"Chromium DOM of /tasks": dom})
    shot = _chromium.screenshot(url, ARTIFACTS / "flower-tasks.png")
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 20_000, f"{shot} is only {len(png)} bytes; the page was probably blank"
