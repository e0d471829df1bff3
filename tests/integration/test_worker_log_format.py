"""Issue 16: a real worker writes one format: every line after Celery's banner is our JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.test_job_flow import integration

SECRET = "s3cr3t-query-value-7781"


def log_lines_after_banner(log: Path) -> list[str]:
    """The complete lines the worker wrote after its banner. Celery prints the banner (and the
    `[tasks]` list) to stdout, not through logging, before anything is logged; it ends with a
    blank line. (Its "Warm shutdown" notice is printed the same way, so we read before stopping.)
    """
    text = log.read_text(errors="replace")
    banner_end = text.index("\n\n", text.index("[tasks]"))
    complete = text[banner_end:text.rindex("\n")]
    return [line for line in complete.splitlines() if line.strip()]


def wait_for_line(log: Path, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"The worker never logged {needle!r}:\n{log.read_text()[-3000:]}")


def parse_all(lines: list[str]) -> list[dict[str, Any]]:
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError as exc:
            raise AssertionError(f"A worker line is not JSON: {line!r}") from exc
    return parsed


def test_every_worker_line_is_redacted_json_including_celerys_own(
        configure, upstream: FaultServer, start_worker) -> None:
    env = configure([integration(upstream.url)], LOG_LEVEL="info", RETRY_AFTER_MAX="500")
    upstream.set_mode("429", retry_after_s=30)  # cut to 0.5 s: our own warning is logged
    upstream.set_script([429, 200])
    worker = start_worker(env, concurrency=1, loglevel="debug")
    job_id = recovery.enqueue("shop", "GET", "/orders", params={"api_key": SECRET})
    job = wait_for_status(get_runtime().engine, job_id, {"succeeded", "failed", "dead"})
    assert job["status"] == "succeeded"
    assert any(SECRET in r["path"] for r in upstream.requests())  # it was sent, not logged
    wait_for_line(worker.log_path, "succeeded in")

    events = parse_all(log_lines_after_banner(worker.log_path))
    assert all({"event", "level", "logger", "timestamp"} <= set(e) for e in events)
    (capped,) = [e for e in events if e["event"] == "retry_after_capped"]
    assert (capped["logger"], capped["level"], capped["job_id"]) == (
        "recovery.core.policy", "warning", job_id)
    succeeded = [e for e in events if e["logger"] == "celery.app.trace"
                 and "succeeded" in e["event"]]
    assert succeeded and succeeded[0]["level"] == "info"
    assert any("received" in e["event"] for e in events if e["logger"].startswith("celery"))
    assert any(e["logger"].startswith("urllib3") and "/orders?api_key=" in e["event"]
               for e in events), "urllib3's request line (DEBUG, --loglevel debug) is missing"
    assert SECRET not in worker.log_path.read_text(errors="replace")
