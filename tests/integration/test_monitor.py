"""`recovery-cli monitor` over a real breaker in Redis, real queues and a real audit trail."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from recovery import celery_app
from recovery.cli.ops import monitor_command
from recovery.demo.faultserver import FaultServer
from recovery.engine.producer import build_job, publish_job
from recovery.engine.runtime import get_runtime
from recovery.engine.synchronous import run_synchronously
from recovery.ops.monitor import QUEUES
from tests.integration.conftest import REPO
from tests.integration.test_job_flow import integration

pytestmark = pytest.mark.integration

FAST_RETRY = {"max_attempts": 2, "initial_delay_ms": 10, "backoff_factor": 1,
              "max_delay_ms": 10, "jitter": 0}


def shop(url: str) -> dict[str, Any]:
    return integration(url, retry=FAST_RETRY,
                       circuit_breaker={"threshold": 2, "reset_timeout_ms": 60000})


def test_queue_names_are_the_celery_apps() -> None:
    assert QUEUES == (celery_app.WORK_QUEUE, celery_app.MAINTENANCE_QUEUE,
                      celery_app.DLQ_QUEUE, celery_app.QUARANTINE_QUEUE)


def test_once_shows_open_breaker_queue_depth_and_recent_failures(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    configure([shop(upstream.url), integration(upstream.url, id="ledger")])
    upstream.set_mode("5xx", status=502)
    rt = get_runtime()
    steps = run_synchronously(build_job(rt.registry, "shop", "GET", "/orders/7"), rt)
    assert [step.status for step in steps] == ["retry", "dead"]
    for number in range(3):
        publish_job(build_job(rt.registry, "ledger", "POST", f"/entries/{number}"))

    result = CliRunner().invoke(monitor_command, ["--once", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    frame = json.loads(result.output)
    breakers = {row["integration"]: row for row in frame["breakers"]}
    assert breakers["shop"]["state"] == "open"
    assert breakers["shop"]["consecutive_failures"] == 2
    assert breakers["shop"]["backend"] == "redis"
    assert breakers["ledger"]["state"] == "closed"
    assert frame["queues"] == {"integrations": 3, "maintenance": 0, "dlq": 0,
                               "dlq.quarantine": 0}
    assert frame["activity"] == [{"integration": "shop", "calls": 2, "failures": 2, "jobs": 1,
                                  "failure_rate": 1.0, "calls_per_min": 0.4}]
    assert [row["http_status"] for row in frame["failures"]] == [502, 502]
    assert [row["decision"] for row in frame["failures"]] == ["dead_letter", "retry"]

    text = CliRunner().invoke(monitor_command, ["--once"], catch_exceptions=False).output
    assert "shop" in text and "open" in text and "integrations: 3" in text
    assert "calls     2  failures     2  (100%)" in text
    assert "HTTP 502" in text


def test_unreachable_services_are_shown_not_fatal(configure, redis_client: redis.Redis) -> None:
    configure(REDIS_URL="redis://127.0.0.1:1/0",
              DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    result = CliRunner().invoke(monitor_command, ["--once"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    queues, audit = result.output.split("Queues")[1].split("Last 5 minutes")
    assert "unavailable:" in queues and "unavailable:" in audit
    assert "(this process only: Redis unreachable)" in result.output


def test_json_needs_once(configure) -> None:
    configure()
    result = CliRunner().invoke(monitor_command, ["--json"])
    assert result.exit_code == 2
    assert "--once" in result.output


def test_refreshes_until_ctrl_c(configure, redis_client: redis.Redis) -> None:
    env = configure()
    process = subprocess.Popen(
        [sys.executable, "-c", "from recovery.cli.ops import monitor_command; monitor_command()",
         "--interval", "0.5"], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        frames = 0
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while frames < 2 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            frames += line.startswith("recovery monitor")
        assert frames == 2, process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "Monitor stopped." in out
