"""PostgreSQL goes away for 30 s while 500 jobs run: no attempt is lost, none is stored twice.

The test runs its own PostgreSQL (initdb into a temporary directory, its own port), never the
machine's shared one, and removes it afterwards even when the test fails.
"""

from __future__ import annotations

import contextlib
import glob
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine, text

import recovery
from recovery.audit import db
from recovery.demo.faultserver import FaultServer
from tests.integration.test_job_flow import integration

pytestmark = pytest.mark.integration

JOBS = 500
OUTAGE_S = 30.0
FINAL = ("succeeded", "degraded", "dead", "failed", "duplicate")


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL server binaries and runuser to start a private instance")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of this test's own, run as the `postgres` OS user."""

    directory: Path
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(["runuser", "-u", "postgres", "--", _pg_bin("pg_ctl"), "-D",
                        str(self.directory / "data"), "-o", options,
                        "-l", str(self.directory / "server.log"), "-w", *args],
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="pgaudit-"))
    shutil.chown(directory, "postgres", "postgres")
    server = PrivatePostgres(directory, _free_port())
    try:
        subprocess.run(["runuser", "-u", "postgres", "--", _pg_bin("initdb"), "-D",
                        str(directory / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.stop("immediate")  # fails only if it never started or already stopped
        shutil.rmtree(directory, ignore_errors=True)


def _final_count(engine: Engine) -> int:
    try:
        return sum(n for status, n in _status_counts(engine).items() if status in FINAL)
    except Exception:
        return -1  # the database is not back yet


def _status_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())


def _wait(condition: Callable[[], bool], timeout: float, what: str,
          explain: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {explain()}"
        time.sleep(0.25)


def _audit(engine: Engine) -> tuple[dict[str, str], dict[str, list[Any]]]:
    """(status by idempotency key, sorted call statuses by idempotency key)."""
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT id, idempotency_key, status FROM jobs")).all()
        calls = conn.execute(text("SELECT job_id, http_status FROM attempts "
                                  "WHERE kind = 'call'")).all()
    key_of = {job_id: key for job_id, key, _ in jobs}
    by_key: dict[str, list[Any]] = {}
    for job_id, status in calls:
        by_key.setdefault(key_of[job_id], []).append(status)
    return {key: status for _, key, status in jobs}, {k: sorted(v) for k, v in by_key.items()}


def test_a_30_second_database_outage_loses_no_attempt_and_stores_none_twice(
        configure: Callable[..., dict[str, str]], upstream: FaultServer,
        start_worker: Callable[..., Any], private_postgres: PrivatePostgres,
        redis_client: redis.Redis) -> None:
    with psycopg.connect(private_postgres.admin_url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "audit"')
    url = private_postgres.admin_url.rsplit("/", 1)[0] + "/audit"
    db.upgrade(url)
    retry = {"max_attempts": 8, "initial_delay_ms": 100, "backoff_factor": 2,
             "max_delay_ms": 800, "jitter": 0}
    env = configure([integration(upstream.url, retry=retry,
                                 circuit_breaker={"threshold": 10_000, "reset_timeout_ms": 1000},
                                 rate_limit={"window_ms": 1000, "max_requests": 100_000},
                                 # a third of the calls fail on purpose: this test is about
                                 # the audit trail, not about rationing retries
                                 retry_budget={"enabled": False})],
                    DATABASE_URL=url)
    upstream.set_mode("slow", delay_ms=150)
    upstream.set_script([503, "slow", "slow"] * 250)  # every third call fails: retries
    worker = start_worker(env, concurrency=3)
    engine = db.make_engine(url)
    try:
        keys = [f"outage-{n}" for n in range(JOBS)]
        for key in keys:
            recovery.enqueue("shop", "POST", "/orders", json={"key": key}, idempotency_key=key)
        _wait(lambda: len(upstream.successes_by_key()) >= 80, 60, "the first jobs")

        private_postgres.stop()
        during = len(upstream.requests())
        time.sleep(OUTAGE_S)
        during = len(upstream.requests()) - during
        private_postgres.start()

        spool = f"{env['RECOVERY_REDIS_PREFIX']}audit:spool"
        _wait(lambda: _final_count(engine) == JOBS, 60, "every job's final status",
              lambda: f"{_status_counts(engine)}; spool entries {redis_client.xlen(spool)}; "
                      f"worker log: {worker.log()[-1500:]}")
        worker.stop()
        statuses, audited_calls = _audit(engine)
    finally:
        engine.dispose()

    assert during >= 100, f"jobs stalled while the database was away ({during} calls)"
    assert "audit_database_unavailable" in worker.log_path.read_text(errors="replace")
    calls: dict[str, list[Any]] = {}
    for request in upstream.requests():
        calls.setdefault(request["idempotency_key"], []).append(request["status"])
    assert set(statuses) == set(keys)
    assert Counter(statuses.values()) == Counter({"succeeded": JOBS})
    assert sum(len(v) for v in calls.values()) > JOBS, "no job was retried"
    wrong = {key: (sorted(calls.get(key, [])), audited_calls.get(key, []))
             for key in keys if sorted(calls.get(key, [])) != audited_calls.get(key, [])}
    assert not wrong, f"{len(wrong)} jobs' audited calls differ from the upstream's, e.g. " \
                      f"{list(wrong.items())[:3]}"
    assert redis_client.xlen(spool) == 0
