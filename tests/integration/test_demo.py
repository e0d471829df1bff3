"""`recovery-cli demo` end to end: embedded, and on real Redis, PostgreSQL and celery workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, func, select

from recovery.audit.db import normalise_url
from recovery.audit.models import Job
from tests.integration._db import postgres_database

CLI = str(Path(sys.executable).parent / "recovery-cli")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TIMEOUT_S = 110


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "RECOVERY_REDIS_PREFIX")}
    env.update(overrides)
    return env


def _run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "demo", "--fast", "--json", *args], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def _summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def _check_flow(summary: dict[str, Any]) -> None:
    """What the six phases must leave behind, whichever backend ran them."""
    assert summary["ok"] is True and summary["problems"] == []
    assert summary["jobs_by_status"] == {"succeeded": 10, "degraded": 6}
    assert summary["jobs"] == 16
    transitions = summary["breaker_transitions"]
    assert transitions[0] == "closed->open"
    assert transitions[-1] == "half_open->closed"
    assert summary["dead_letters"] == 2
    assert summary["replayed"] == 2 and summary["replayed_succeeded"] == 2
    # Every call attempt reached the upstream, and deferred jobs made no call at all.
    assert summary["call_attempts"] == summary["upstream_calls"]
    assert summary["deferrals"] > 0
    # 4 healthy + 3 flaky + 3 first outage wave (+ probes) + 3 recovery + 2 bad + 2 replays.
    assert 17 <= summary["upstream_calls"] <= 24


def test_embedded_demo_runs_the_whole_flow_without_services() -> None:
    result = _run_demo(_env(), "--embedded")
    summary = _summary(result)
    _check_flow(summary)
    assert summary["mode"] == "embedded"
    assert summary["fallbacks_used"] == {"degraded": 6}  # no cache without Redis
    assert summary["worker_pids"] == []
    assert summary["workflow_runs"] == {}  # workflow steps need real workers
    assert "Demo mode: embedded" in result.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_services_demo_uses_redis_postgres_and_real_workers() -> None:
    with postgres_database() as database_url:
        result = _run_demo(_env(REDIS_URL=TEST_REDIS_URL, DATABASE_URL=database_url))
        summary = _summary(result)
        _check_flow(summary)
        assert summary["mode"] == "services"
        # /catalog, /prices and /stock were cached in the healthy phase; /reports never was.
        assert summary["fallbacks_used"] == {"cache": 4, "degraded": 2}
        assert summary["workflow_runs"] == {"order": "succeeded", "replayed": "succeeded",
                                            "saga": "compensated"}
        pids = summary["worker_pids"]
        assert len(pids) == 2 and not any(_alive(pid) for pid in pids)
        engine = create_engine(normalise_url(database_url))
        try:
            with engine.connect() as conn:
                jobs = conn.execute(select(func.count()).select_from(Job).where(
                    Job.integration == summary["integration"])).scalar()
        finally:
            engine.dispose()
        assert jobs == summary["jobs"]
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"*{summary['integration']}:*")) == []
    finally:
        client.close()


def test_unreachable_redis_exits_2_naming_it() -> None:
    result = _run_demo(_env(REDIS_URL="redis://127.0.0.1:1/0"))
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "cannot be reached" in result.stderr
    assert result.stdout == ""
