"""Issue 16: one format for every line. Records from stdlib loggers (Celery, kombu, alembic,
urllib3) go through the same processors as our structlog events: same fields, same redaction,
same renderer, and the job's identity inside a job."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Any

import pytest
import structlog

from recovery.core.message import JobSpec
from recovery.telemetry.logging import configure_logging, job_context, reset_logging

JOB = JobSpec(job_id="job-7", integration="shop", method="GET", path="/x", idempotency_key="k")


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_stdlib_record_renders_as_our_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    logging.getLogger("celery.app.trace").info("Task %s[%s] succeeded", "tasks.x", "id-1")
    (line,) = lines(capsys)
    assert line["event"] == "Task tasks.x[id-1] succeeded"
    assert (line["level"], line["logger"]) == ("info", "celery.app.trace")
    assert line["timestamp"].endswith("Z")
    assert "_record" not in line and "_from_structlog" not in line


def test_structlog_and_stdlib_lines_have_the_same_fields(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    structlog.get_logger("recovery.core.policy").info("ours")
    logging.getLogger("kombu.connection").info("theirs")
    ours, theirs = lines(capsys)
    assert set(ours) == set(theirs) == {"event", "level", "logger", "timestamp"}
    assert (ours["logger"], theirs["logger"]) == ("recovery.core.policy", "kombu.connection")


def test_secrets_in_stdlib_messages_and_args_are_redacted(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", json=True)
    urllib3 = logging.getLogger("urllib3.connectionpool")
    urllib3.debug('%s "%s %s HTTP/1.1" 200', "https://api.example", "GET",
                  "/v1/orders?api_key=k-991&page=2")
    logging.getLogger("celery.worker").warning("Authorization: Bearer abc.def.ghi rejected")
    request, auth = lines(capsys)
    assert "k-991" not in request["event"] and "page=2" in request["event"]
    assert "abc.def.ghi" not in auth["event"] and "rejected" in auth["event"]


def test_a_stdlib_exception_is_one_json_line_with_a_redacted_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    try:
        raise RuntimeError("connect to https://user:hunter2@db.example failed")
    except RuntimeError:
        logging.getLogger("celery.app.trace").exception("Task failed")
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    line = json.loads(err)
    assert line["level"] == "error" and line["event"] == "Task failed"
    assert "RuntimeError" in line["exception"] and "hunter2" not in line["exception"]


def test_stdlib_lines_inside_a_job_carry_its_identity(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    with job_context(JOB, "task-3", 2):
        logging.getLogger("urllib3").warning("Retrying connection")
    logging.getLogger("urllib3").warning("outside")
    inside, outside = lines(capsys)
    assert (inside["job_id"], inside["task_id"], inside["attempt"]) == ("job-7", "task-3", 2)
    assert "job_id" not in outside


@pytest.mark.parametrize(("ours", "theirs", "shown"), [
    ("warning", "info", {"stdlib info", "ours warning"}),
    ("info", "warning", {"ours info", "ours warning"}),
    ("info", None, {"ours info", "ours warning", "stdlib info"}),
])
def test_log_level_filters_ours_and_foreign_level_filters_theirs(
        capsys: pytest.CaptureFixture[str], ours: str, theirs: str | None,
        shown: set[str]) -> None:
    configure_logging(ours, json=True, foreign_level=theirs)
    structlog.get_logger("recovery.x").info("ours info")
    structlog.get_logger("recovery.x").warning("ours warning")
    logging.getLogger("celery.x").info("stdlib info")
    logging.getLogger("celery.x").debug("stdlib debug")
    assert {line["event"] for line in lines(capsys)} == shown


def test_configuring_again_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    configure_logging("info", json=True)
    logging.getLogger("alembic.runtime.migration").info("Running upgrade")
    assert [line["event"] for line in lines(capsys)] == ["Running upgrade"]


def test_python_warnings_become_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("kombu is old", DeprecationWarning, stacklevel=1)
    (line,) = lines(capsys)
    assert line["logger"] == "py.warnings" and "kombu is old" in line["event"]


def test_console_renderer_applies_to_stdlib_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=False)
    logging.getLogger("celery.worker").info("worker ready token=abc123secret")
    err = capsys.readouterr().err
    assert "worker ready" in err and "celery.worker" in err
    assert not err.lstrip().startswith("{") and "abc123secret" not in err


def test_celery_setup_logging_signal_installs_our_format(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery sends `setup_logging` and, since it has a receiver, installs no formatter of its
    own and no stdout redirect; `--loglevel` becomes the threshold for its lines."""
    from celery.app.log import Logging

    from recovery.celery_app import app

    monkeypatch.setattr(os, "environ", dict(os.environ))  # Celery exports its log settings
    monkeypatch.setattr(Logging, "_setup", False)
    app.log.setup(loglevel="INFO", redirect_stdouts=True)
    monkeypatch.setattr(Logging, "_setup", False)
    logging.getLogger("celery.worker.strategy").info("Task t[1] received")
    logging.getLogger("celery.worker.strategy").debug("hidden by --loglevel")
    (line,) = lines(capsys)
    assert (line["event"], line["logger"], line["level"]) == (
        "Task t[1] received", "celery.worker.strategy", "info")
    assert type(sys.stdout).__name__ != "LoggingProxy"


def test_reset_logging_removes_our_handler_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    before = list(logging.getLogger().handlers)
    configure_logging("debug", json=True)
    reset_logging()
    assert logging.getLogger().handlers == before
    assert logging.getLogger().level == logging.WARNING
    logging.getLogger("celery.x").info("not shown")
    assert capsys.readouterr().err == ""


def test_a_library_logging_a_dict_is_filtered_as_foreign(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True, foreign_level="warning")
    logging.getLogger("somelib").info({"detail": "chatty"})
    logging.getLogger("somelib").warning({"detail": "loud"})
    (line,) = lines(capsys)
    assert line["logger"] == "somelib" and "loud" in line["event"]
