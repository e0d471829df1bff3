"""The console in a real headless browser (Debian's chromium + chromedriver, Selenium).

One operator session against real services: jobs die through a real worker (the upstream
answers 503), the upstream recovers, and the operator logs in, filters the dead letters, dry-runs
and then replays two of them, sees them succeed, opens and closes a breaker and reads a job's
timeline. A second session runs a small workflow through a real worker and follows it from
the Workflow runs page to a step's job. Screenshots of every page go to $CONSOLE_ARTIFACTS
(default: the test's tmp_path).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from recovery.engine.workflows.runs import start_workflow
from tests.integration._console import PASSWORDS, ConsoleProcess, console_env
from tests.integration.conftest import wait_for_status
from tests.integration.test_console_http import alerts
from tests.integration.test_dlq_support import dlq_ids
from tests.integration.test_job_flow import integration
from tests.integration.test_workflows import wait_run

pytestmark = pytest.mark.integration

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
WAIT_S = 60.0


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return (f"{path} is missing; install Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver) to run the browser tests.")
    return None


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not go online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,900",
                     "--disable-background-networking", "--no-first-run"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[WebDriver, str], Path]:
    folder = Path(os.environ.get("CONSOLE_ARTIFACTS") or tmp_path / "console-screens")
    folder.mkdir(parents=True, exist_ok=True)

    def take(browser: WebDriver, name: str) -> Path:
        path = folder / f"{name}.png"
        assert browser.save_screenshot(str(path)), f"no screenshot {path}"
        return path

    return take


def wait(browser: WebDriver, condition: Callable[[WebDriver], Any],
         timeout: float = WAIT_S) -> Any:
    """Poll `condition` until truthy; a page replaced mid-check (a form's redirect) is
    looked at again on the next poll."""
    return WebDriverWait(browser, timeout, poll_frequency=0.3,
                         ignored_exceptions=(StaleElementReferenceException,
                                             NoSuchElementException)).until(condition)


def text_of(browser: WebDriver, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def _dead_jobs(env: dict[str, str], upstream: FaultServer, start_worker: Any) -> list[str]:
    """Four jobs (three shop, one crm) that die after two 503s; the upstream then recovers."""
    upstream.set_mode("5xx", status=503)
    start_worker(env)
    ids = [recovery.enqueue(name, "POST", "/orders", json={"n": n}, params={"page": str(n)},
                            headers={"X-Team": "blue"})
           for n, name in enumerate(("shop", "shop", "crm", "shop"))]
    for job_id in ids:
        wait_for_status(get_runtime().engine, job_id, {"dead"})
        _wait_for_attempts(job_id, 2)
    upstream.set_mode("ok")
    return ids


def _wait_for_attempts(job_id: str, count: int) -> None:
    """The audit spool drains about once a second: wait until the job's attempts are rows."""
    from recovery.audit.queries import get_job

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = get_job(get_runtime().engine, job_id)
        if job is not None and len(job["attempts"]) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"Job {job_id} did not get {count} attempt rows in {WAIT_S} s.")


def _log_in(browser: WebDriver, base: str, shots: Callable[..., Path]) -> None:
    browser.get(base + "/dlq/")
    wait(browser, lambda b: "/login" in b.current_url)
    shots(browser, "01-login")
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["alice"])
    browser.find_element(By.ID, "login").click()
    wait(browser, lambda b: b.current_url.rstrip("/").endswith("/dlq"))


def _overview_refreshes(browser: WebDriver, base: str, shots: Callable[..., Path]) -> None:
    browser.get(base + "/")
    calls = browser.find_element(By.CSS_SELECTOR, "#chart-calls svg title").get_attribute(
        "textContent")
    assert calls == "calls: 8 in the last hour", calls
    for name, title in (("retries", "retries: 4"), ("dead_letters", "dead letters: 4"),
                        ("fallbacks", "fallbacks: 0"), ("failures", "failures by class: 8")):
        shown = browser.find_element(By.CSS_SELECTOR, f"#chart-{name} svg title")
        assert shown.get_attribute("textContent") == f"{title} in the last hour", name
    legend = browser.find_element(By.CSS_SELECTOR, "#chart-failures svg").text
    assert "server_error 8" in legend, legend
    browser.execute_script("window.consoleMarker = 'same page';")
    first = text_of(browser, "overview-at")
    wait(browser, lambda b: text_of(b, "overview-at") != first, timeout=30)
    assert browser.execute_script("return window.consoleMarker;") == "same page"
    shots(browser, "02-overview")


def _filter_and_replay_two(browser: WebDriver, shots: Callable[..., Path]) -> list[str]:
    browser.find_element(By.ID, "nav-dlq").click()
    assert "4 matching of 4" in text_of(browser, "dlq-count")
    Select(browser.find_element(By.ID, "f-integration")).select_by_visible_text("shop")
    browser.find_element(By.ID, "apply-filters").click()
    wait(browser, lambda b: "3 matching of 4" in text_of(b, "dlq-count"))
    shots(browser, "03-dead-letters-filtered")
    boxes = browser.find_elements(By.CSS_SELECTOR, "#dlq-table input.pick")
    chosen = [str(box.get_attribute("value")) for box in boxes[:2]]
    for box in boxes[:2]:
        box.click()
    browser.find_element(By.ID, "replay-selected").click()
    wait(browser, lambda b: b.find_elements(By.ID, "dry-run-summary"))
    assert "would replay 2, skip 0, quarantine 0" in text_of(browser, "dry-run-summary")
    shots(browser, "04-replay-dry-run")
    browser.find_element(By.ID, "confirm-replay").click()
    wait(browser, lambda b: b.find_elements(By.ID, "replay-summary"))
    assert "Replayed 2, skipped 0, quarantined 0, failed 0." in text_of(browser, "replay-summary")
    shots(browser, "05-replay-done")
    return chosen


def _see_succeeded(browser: WebDriver, base: str, job_id: str) -> None:
    def succeeded(b: WebDriver) -> bool:
        b.get(f"{base}/jobs/{job_id}")
        return text_of(b, "job-status") == "succeeded"

    wait(browser, succeeded)


def _read_timeline(browser: WebDriver, shots: Callable[..., Path]) -> None:
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-row")]
    assert len(rows) == 3, rows
    assert rows[0].startswith("#1 call +0 ms") and "retry" in rows[0]
    assert "next in" in rows[0] and "(backoff)" in rows[0] and "HTTP 503" in rows[0]
    assert "dead_letter" in rows[1] and "HTTP 503" in rows[1]
    assert rows[2].startswith("replay 1 · #1 call")
    assert "done" in rows[2] and "HTTP 200" in rows[2]
    shots(browser, "06-job-timeline")


def _open_and_close_breaker(browser: WebDriver, shots: Callable[..., Path]) -> None:
    browser.find_element(By.ID, "nav-breakers").click()
    row = "#breaker-shop .state"
    assert browser.find_element(By.CSS_SELECTOR, row).text == "closed"
    browser.find_element(By.CSS_SELECTOR, "#breaker-shop input[name=reason]").send_keys(
        "vendor maintenance")
    browser.find_element(By.ID, "open-shop").click()
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, row).text == "open")
    assert "Breaker of shop is now open." in browser.page_source
    shots(browser, "07-breaker-open")
    browser.find_element(By.ID, "close-shop").click()
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, row).text == "closed")


def test_operator_logs_in_filters_replays_two_and_steers_a_breaker(
        configure, upstream: FaultServer, start_worker, driver: WebDriver,
        shots: Callable[..., Path], redis_client: redis.Redis, tmp_path: Path) -> None:
    retry = {"max_attempts": 2, "initial_delay_ms": 300, "backoff_factor": 2,
             "max_delay_ms": 5000, "jitter": 0}
    env = configure([integration(upstream.url, retry=retry),
                     integration(upstream.url, id="crm", retry=retry)])
    ids = _dead_jobs(env, upstream, start_worker)
    console = ConsoleProcess(console_env(env), tmp_path / "console.log")
    try:
        _log_in(driver, console.base, shots)
        _overview_refreshes(driver, console.base, shots)
        chosen = _filter_and_replay_two(driver, shots)
        assert set(chosen) <= {ids[0], ids[1], ids[3]}  # the shop jobs, in the order they died
        for job_id in chosen:
            _see_succeeded(driver, console.base, job_id)
        _read_timeline(driver, shots)
        _open_and_close_breaker(driver, shots)
        for page in ("quarantine", "jobs"):
            driver.find_element(By.ID, f"nav-{page}").click()
            shots(driver, f"08-{page}")
    finally:
        console.stop()
    rt = get_runtime()
    assert sorted(dlq_ids(redis_client, rt)) == sorted(set(ids) - set(chosen))
    keys = {recovery_key(rt, job_id) for job_id in chosen}
    sent = [req for req in upstream.requests() if req["idempotency_key"] in keys]
    assert sorted(req["status"] for req in sent) == [200, 200, 503, 503, 503, 503]
    assert {req["path"] for req in sent} == {f"/orders?page={ids.index(job_id)}"
                                             for job_id in chosen}
    assert all(req["headers"].get("X-Team") == "blue" for req in sent)
    opened = alerts(rt, "breaker_manual_open")
    closed = alerts(rt, "breaker_manual_close")
    assert opened[0]["message"] == "vendor maintenance"
    assert opened[0]["details"]["actor"] == closed[0]["details"]["actor"] == "alice"
    if os.environ.get("CONSOLE_README_SHOT"):
        shutil.copy(Path(os.environ.get("CONSOLE_ARTIFACTS") or tmp_path / "console-screens")
                    / "03-dead-letters-filtered.png", os.environ["CONSOLE_README_SHOT"])


def recovery_key(rt: Any, job_id: str) -> str:
    from recovery.audit.queries import get_job

    job = get_job(rt.engine, job_id)
    assert job is not None
    return str(job["idempotency_key"])


WORKFLOW_STEPS = [
    {"id": "validate", "type": "validation",
     "config": {"callable": "recovery.demo.order.validate_order", "inputs": "${input}"}},
    {"id": "charge", "type": "api_call", "depends_on": ["validate"],
     "config": {"integration": "shop", "method": "POST", "path": "/charges",
                "json": {"order_id": "${input.order_id}", "amount": "${steps.validate.amount}"}}},
]


def _follow_the_run(browser: WebDriver, run_id: str, shots: Callable[..., Path]) -> None:
    """Workflow runs -> the run -> its steps succeeded -> the charge step's job timeline."""
    browser.find_element(By.ID, "nav-workflows").click()
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f"#runs tr[data-run='{run_id}']"))
    assert "1 matching of 1 runs" in text_of(browser, "run-count")
    shots(browser, "09-workflow-runs")
    browser.find_element(By.LINK_TEXT, run_id).click()
    wait(browser, lambda b: text_of(b, "run-status") == "succeeded")
    assert text_of(browser, "run-workflow") == "order"
    rows = browser.find_elements(By.CSS_SELECTOR, "#steps tr[data-step]")
    assert [row.get_attribute("data-step") for row in rows] == ["validate", "charge"]
    assert all(row.find_element(By.CSS_SELECTOR, ".status").text == "succeeded"
               for row in rows)
    assert "ada@example.test" not in browser.page_source  # the input is shown redacted
    shots(browser, "10-workflow-run")
    rows[1].find_element(By.CSS_SELECTOR, "a.step-job").click()
    wait(browser, lambda b: text_of(b, "job-status") == "succeeded")
    assert "step charge of order run" in text_of(browser, "job-run")
    [row] = browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-row")
    assert row.text.startswith("#1 call +0 ms") and "HTTP 200" in row.text
    shots(browser, "11-workflow-step-job")
    browser.find_element(By.ID, "job-run-link").click()
    wait(browser, lambda b: b.current_url.endswith(f"/workflows/{run_id}"))


def test_operator_follows_a_workflow_run_to_its_steps_job(
        configure, upstream: FaultServer, start_worker, driver: WebDriver,
        shots: Callable[..., Path], tmp_path: Path) -> None:
    path = tmp_path / "workflows.yaml"
    path.write_text(yaml.safe_dump({"workflows": [{"name": "order", "steps": WORKFLOW_STEPS}]}))
    env = configure([integration(upstream.url)], RECOVERY_WORKFLOWS=str(path))
    start_worker(env)
    run_id = start_workflow("order", {"order_id": "A-17", "amount": 2500,
                                      "email": "ada@example.test"})
    run = wait_run(run_id, {"succeeded", "degraded", "dead", "compensated"})
    assert run["status"] == "succeeded", run
    charge_job = run["steps"][1]["job_id"]
    wait_for_status(get_runtime().engine, charge_job, {"succeeded"})
    _wait_for_attempts(charge_job, 1)
    console = ConsoleProcess(console_env(env), tmp_path / "console.log")
    try:
        _log_in(driver, console.base, shots)
        _follow_the_run(driver, run_id, shots)
    finally:
        console.stop()
