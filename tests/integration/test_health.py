"""Health checks against a real upstream, Redis and PostgreSQL; Beat and a worker run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from recovery.audit.models import Alert, BreakerTransition, HealthCheck
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import Runtime, get_runtime
from recovery.ops.health import FailureStreak, run_health_check
from recovery.telemetry import alerts, metrics

REPO = Path(__file__).resolve().parents[2]
BEAT_COMMAND = [sys.executable, "-m", "celery", "-A", "recovery.celery_app", "beat",
                "-l", "info", "--max-interval", "1"]


def crm(upstream: FaultServer, **health: Any) -> dict[str, Any]:
    check = {"endpoint": "/health", "interval_ms": 1000, "timeout_ms": 1000,
             "failure_threshold": 2, **health}
    return {"id": "crm", "base_url": upstream.url, "health_check": check,
            "circuit_breaker": {"threshold": 5, "reset_timeout_ms": 20000}}


def rows(rt: Runtime, table: Any) -> list[Any]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.id)))


@pytest.fixture
def runtime(configure: Callable[..., dict[str, str]], upstream: FaultServer) -> Iterator[Runtime]:
    configure([crm(upstream)])
    alerts.set_alerter(None)
    alerts.install_breaker_alerts()
    yield get_runtime()
    alerts.set_alerter(None)


def test_a_healthy_check_is_recorded_and_counted(runtime: Runtime,
                                                 redis_client: redis.Redis) -> None:
    report = run_health_check(runtime.registry.get("crm"), runtime, tries=1)

    assert (report.ok, report.http_status, report.breaker_action) == (True, 200, "none")
    [row] = rows(runtime, HealthCheck.__table__)
    assert (row.integration, row.ok, row.http_status, row.error) == ("crm", True, 200, None)
    assert row.latency_ms >= 0
    metrics.flush()  # observations are buffered for up to a second
    counted = redis_client.hgetall(f"{runtime.settings.redis_key_prefix}metrics:"
                                   "health_checks_total")
    assert {k.decode(): float(v) for k, v in counted.items()} == {'["crm","true"]': 1.0}


def test_failed_checks_in_a_row_open_the_breaker_before_jobs_find_out(
    runtime: Runtime, upstream: FaultServer, redis_client: redis.Redis
) -> None:
    upstream.set_mode("5xx")
    integration = runtime.registry.get("crm")

    reports = [run_health_check(integration, runtime, tries=1) for _ in range(3)]

    assert [r.consecutive_failures for r in reports] == [1, 2, 3]
    assert [r.breaker_action for r in reports] == ["none", "opened", "none"]
    assert runtime.breaker(integration).snapshot().state == "open"
    assert [r.http_status for r in rows(runtime, HealthCheck.__table__)] == [503, 503, 503]
    kinds = [r.kind for r in rows(runtime, Alert.__table__)]
    assert sorted(kinds) == ["breaker_opened", "health_check_failing"]
    [transition] = rows(runtime, BreakerTransition.__table__)
    assert (transition.from_state, transition.to_state) == ("closed", "open")
    assert "health check" in transition.reason
    streak = FailureStreak(runtime.redis, runtime.settings.redis_key_prefix).key("crm")
    assert redis_client.get(streak) == b"3"
    assert [r["path"] for r in upstream.requests()] == ["/health"] * 3


def test_a_healthy_check_closes_an_open_breaker_without_spending_a_job(
    runtime: Runtime, upstream: FaultServer, redis_client: redis.Redis
) -> None:
    integration = runtime.registry.get("crm")
    breaker = runtime.breaker(integration)
    breaker.force_open("the upstream was down")
    streak = FailureStreak(runtime.redis, runtime.settings.redis_key_prefix)
    streak.failed("crm", 60)

    report = run_health_check(integration, runtime, tries=1)

    assert report.breaker_action == "closed"
    assert breaker.snapshot().state == "closed"
    assert [r["path"] for r in upstream.requests()] == ["/health"]
    alert = rows(runtime, Alert.__table__)[-1]
    assert alert.kind == "breaker_closed_by_health_check"
    assert alert.integration == "crm"
    assert redis_client.exists(streak.key("crm")) == 0


def test_without_auto_recovery_checks_leave_the_breaker_alone(
    configure: Callable[..., dict[str, str]], upstream: FaultServer
) -> None:
    configure([crm(upstream)], ENABLE_AUTO_RECOVERY="false")
    alerts.set_alerter(None)
    rt = get_runtime()
    integration = rt.registry.get("crm")
    breaker = rt.breaker(integration)

    upstream.set_mode("5xx")
    actions = [run_health_check(integration, rt, tries=1).breaker_action for _ in range(3)]
    assert actions == ["none"] * 3
    assert breaker.snapshot().state == "closed"
    assert [r.kind for r in rows(rt, Alert.__table__)] == ["health_check_failing"]

    breaker.force_open("manual")
    upstream.set_mode("ok")
    assert run_health_check(integration, rt, tries=1).breaker_action == "none"
    assert breaker.snapshot().state == "open"


def test_transient_failures_are_retried_and_permanent_ones_are_not(
    configure: Callable[..., dict[str, str]], upstream: FaultServer
) -> None:
    configure([crm(upstream), {**crm(upstream, endpoint="/status"), "id": "secured"}])
    rt = get_runtime()

    upstream.set_mode("5xx")
    transient = run_health_check(rt.registry.get("crm"), rt, tries=3)
    upstream.reset()
    upstream.set_mode("auth", token="expected")
    permanent = run_health_check(rt.registry.get("secured"), rt, tries=3)

    assert (transient.ok, transient.tries, transient.http_status) == (False, 3, 503)
    assert (permanent.ok, permanent.tries, permanent.http_status) == (False, 1, 401)
    assert [r["path"] for r in upstream.requests()] == ["/status"]


def test_an_unreachable_upstream_is_a_failed_check_with_the_reason(
    runtime: Runtime, upstream: FaultServer
) -> None:
    upstream.down()

    report = run_health_check(runtime.registry.get("crm"), runtime, tries=1)

    assert (report.ok, report.http_status) == (False, None)
    assert report.error
    [row] = rows(runtime, HealthCheck.__table__)
    assert row.ok is False
    assert row.error == report.error


def test_the_task_skips_an_unknown_integration(runtime: Runtime) -> None:
    from tasks.health import check

    result = check.apply(args=("nope",)).get()

    assert result["integration"] == "nope"
    assert "Unknown integration 'nope'" in result["skipped"]


def test_beat_and_a_worker_check_only_integrations_with_a_health_check(
    configure: Callable[..., dict[str, str]], upstream: FaultServer, start_worker: Any,
    tmp_path: Path,
) -> None:
    quiet = {"id": "quiet", "base_url": upstream.url}
    env = configure([crm(upstream), quiet], DLQ_ENABLED="false", LOG_LEVEL="info")
    rt = get_runtime()
    start_worker(env, concurrency=1)
    beat = subprocess.Popen([*BEAT_COMMAND, "--schedule", str(tmp_path / "schedule")], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(rows(rt, HealthCheck.__table__)) < 2:
            if beat.poll() is not None:
                break
            time.sleep(0.3)
    finally:
        if beat.poll() is None:
            os.killpg(beat.pid, signal.SIGTERM)
        output = beat.communicate(timeout=30)[0].decode()

    checked = {row.integration for row in rows(rt, HealthCheck.__table__)}
    assert checked == {"crm"}, output
    assert beat.returncode == 0, output
    assert json.dumps(output).count("beat_lock_acquired") == 1
