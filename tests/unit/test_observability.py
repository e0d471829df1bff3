"""structlog output: JSON lines carrying the job's identity inside a job, and no secrets."""

from __future__ import annotations

import json

import pytest
import structlog

from recovery.core.message import JobSpec
from recovery.telemetry.logging import configure_logging, job_context

JOB = JobSpec(job_id="job-1", integration="shop", method="GET", path="/x", idempotency_key="k")


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_lines_inside_a_job_carry_its_identity_and_are_cleared_after(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    log = structlog.get_logger("test")
    with job_context(JOB, "task-9", 2):
        log.info("calling_upstream")
    log.info("outside")
    inside, outside = lines(capsys.readouterr().err)
    assert (inside["job_id"], inside["task_id"], inside["integration"], inside["attempt"]) == (
        "job-1", "task-9", "shop", 2)
    assert inside["level"] == "info" and inside["timestamp"].endswith("Z")
    assert "job_id" not in outside and outside["event"] == "outside"


def test_log_level_filters_and_secrets_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", json=True)
    log = structlog.get_logger("test")
    log.info("hidden")
    log.warning("upstream_said", detail="Authorization: Bearer abc.def.ghi failed")
    (only,) = lines(capsys.readouterr().err)
    assert only["event"] == "upstream_said"
    assert "abc.def.ghi" not in json.dumps(only)


def test_console_output_is_readable_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=False)
    structlog.get_logger("test").info("hello_console", integration="shop")
    err = capsys.readouterr().err
    assert "hello_console" in err and not err.lstrip().startswith("{")
