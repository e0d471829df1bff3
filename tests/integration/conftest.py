"""Real services for integration tests: a database per test, a clean key prefix, a local
upstream, and real `celery worker` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

from recovery.config.loader import reset_registry
from recovery.config.settings import reset_settings
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import reset_runtime
from tests.integration._process import stop_group

ADMIN_DSN = os.environ.get("TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[2]
#: The pool the README's worker command runs (recovery.celery_app: worker_pool).
DEFAULT_POOL = "threads"


def _admin(sql: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, dropped afterwards."""
    from recovery.audit.db import upgrade

    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin(f'CREATE DATABASE "{name}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        reset_runtime()
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """The test Redis; every key under the session prefix is deleted after the test."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield client
    prefix = os.environ["RECOVERY_REDIS_PREFIX"]
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    keys += list(client.scan_iter(match=f"*{prefix}*", count=1000))
    if keys:
        client.delete(*set(keys))
    client.close()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A client on the test Redis database, for tests that work below the runtime."""
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield connection
    connection.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix of the test's own; every key under it is deleted afterwards."""
    name = f"test:{uuid.uuid4().hex}:"
    yield name
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def upstream() -> Iterator[FaultServer]:
    server = FaultServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def configure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, redis_client: redis.Redis
) -> Iterator[Callable[..., dict[str, str]]]:
    """Set the environment for a test (settings and an integrations file); returns the env.

    `configure(integrations=[{...}], MAX_RETRIES="3")` writes the YAML and sets variables.
    """

    def apply(integrations: list[dict[str, Any]] | None = None, **env: str) -> dict[str, str]:
        monkeypatch.setenv("DATABASE_URL", database_url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        if integrations is not None:
            path = tmp_path / "integrations.yaml"
            path.write_text(yaml.safe_dump({"integrations": integrations}))
            monkeypatch.setenv("RECOVERY_INTEGRATIONS", str(path))
        reset_settings()
        reset_registry()
        reset_runtime()
        return dict(os.environ)

    yield apply
    reset_settings()
    reset_registry()
    reset_runtime()


class WorkerProcess:
    """A real `celery worker` subprocess, stopped (and its pool reaped) at teardown."""

    def __init__(
        self, env: dict[str, str], concurrency: int, log_path: Path, queues: str | None,
        loglevel: str = "info", heartbeat: bool = False, include: str | None = None,
        pool: str = DEFAULT_POOL,
    ) -> None:
        """`heartbeat`: run as deployed, with heartbeats (and so an event dispatcher that
        `enable_events`, sent by Flower, can switch on); off, the worker starts faster.
        `pool`: the README's `threads` by default; `prefork` where a test needs pool
        processes of its own (`pool_pids`, killing one)."""
        self.pool = pool
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "recovery.celery_app",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            *([] if heartbeat else ["--without-heartbeat"]),
            "-l",
            loglevel,
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
        ]
        if queues:
            command += ["-Q", queues]
        if include:  # test-only modules, e.g. tests.integration.faults
            command += ["--include", include]
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            env={**env, "WORKER_POOL": pool},  # Celery ignores `-P prefork` alone
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"ready." in self.log_path.read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"The worker did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def pool_pids(self) -> list[int]:
        assert self.pool == "prefork", "Only a prefork worker has pool processes."
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        stop_group(self.process, grace_s=20)
        self._log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(
        env: dict[str, str], concurrency: int = 2, queues: str | None = None,
        loglevel: str = "info", include: str | None = None, pool: str = DEFAULT_POOL,
    ) -> WorkerProcess:
        worker = WorkerProcess(env, concurrency, tmp_path / f"worker{len(workers)}.log", queues,
                               loglevel, include=include, pool=pool)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def wait_for_status(
    engine: Any, job_id: str, statuses: set[str], timeout: float = 60.0
) -> dict[str, Any]:
    """Poll the audit trail until the job reaches one of `statuses`; fail with its last state."""
    from recovery.audit.queries import get_job

    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = get_job(engine, job_id)
        if job is not None and job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"Job {job_id} did not reach {statuses} in {timeout} s; last: {job}")


RABBITMQ = ("127.0.0.1", 5672)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _rabbitmq_answers() -> bool:
    import shutil
    import socket

    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        socket.create_connection(RABBITMQ, timeout=2).close()
    except OSError:
        return False
    return True


def reconfigure_celery_app() -> None:
    """Point this process's Celery app at the broker the environment names now (the app was
    built at import time, from the environment of that moment)."""
    from kombu import pools

    from recovery.celery_app import app, celery_config
    from recovery.config.settings import load_settings

    pools.reset()  # closes and forgets kombu's process-wide connection and producer pools
    app.conf.update(celery_config(load_settings()))
    app._pool = None
    app.__dict__.pop("amqp", None)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a cross-process test on each broker. On RabbitMQ the test gets a virtual host of
    its own (created with rabbitmqctl, deleted afterwards with every queue in it), so runs
    and tests never share a queue; the state store stays the test Redis."""
    if request.param == "redis":
        monkeypatch.delenv("BROKER_URL", raising=False)
        yield "redis"
        return
    if not _rabbitmq_answers():
        why = "RabbitMQ does not answer on 127.0.0.1:5672 (`bash .ci/run` starts it)"
        if os.environ.get("REQUIRE_RABBITMQ"):
            pytest.fail(why)
        pytest.skip(why)
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        monkeypatch.setenv("BROKER_URL", f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
        reset_settings()
        reconfigure_celery_app()
        yield "rabbitmq"
    finally:
        monkeypatch.delenv("BROKER_URL", raising=False)
        reset_settings()
        reconfigure_celery_app()
        _rabbitmqctl("delete_vhost", vhost)
