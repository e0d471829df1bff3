"""`recovery-cli report` over real audit trails: seeded rows with known answers (on PostgreSQL and
SQLite alike), real jobs run through the pipeline, the HTML page rendered in Chromium."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete

from recovery.audit.db import make_engine, upgrade
from recovery.audit.models import Attempt, AttemptRecord, DeadLetterRecord, Job
from recovery.audit.writer import AuditWriter
from recovery.cli.ops import monitor_command, report_command, simulate_command
from recovery.demo.faultserver import FaultServer
from recovery.engine.outcome import park_dead
from recovery.engine.producer import build_job
from recovery.engine.runtime import get_runtime
from recovery.engine.synchronous import run_synchronously
from recovery.ops.report import Window, build_report, parse_window, slowest_endpoints
from tests.integration import _chromium as chromium
from tests.integration.conftest import REPO
from tests.integration.test_job_flow import integration

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
ARTIFACTS = REPO / "test-artifacts"


class Seeder:
    """Writes jobs and attempts at chosen times through the real AuditWriter."""

    def __init__(self, engine: Engine) -> None:
        self.writer = AuditWriter(engine, clock=lambda: NOW)
        self.count = 0

    def job(self, integration: str, path: str, calls: list[tuple[int, int, str, list[str]]],
            status: str, fallback: str | None = None) -> str:
        """calls: (seconds before NOW, duration ms, decision, error categories)."""
        self.count += 1
        job_id = f"{integration}-{self.count}"
        self.writer.job_queued(job_id, integration, "GET", path, {}, job_id)
        for number, (ago, duration, decision, categories) in enumerate(calls, 1):
            retryable = None if decision == "done" else "client_error" not in categories
            self.writer.attempt(AttemptRecord(
                job_id=job_id, number=number, kind="call", decision=decision,
                started_at=NOW - timedelta(seconds=ago), duration_ms=duration,
                error_categories=categories, retryable=retryable,
                error_message=None if decision == "done" else "HTTP failure"))
        self.writer.job_status(job_id, status, attempts=len(calls), fallback_used=fallback,
                               finished=True)
        return job_id

    def dead(self, job_id: str, integration: str, ago: timedelta) -> None:
        self.writer.dead_letter(DeadLetterRecord(
            job_id=job_id, integration=integration, task_name="tasks.integration.call",
            error_categories=["client_error"], last_status=400, message="HTTP 400",
            attempts=1, first_enqueued_at=NOW - ago, envelope={}, dead_at=NOW - ago))


def seed(engine: Engine) -> None:
    s = Seeder(engine)
    for i in range(20):  # 10, 20, ..., 200 ms: nearest-rank p95 is 190, the max 200
        s.job("pay", "/slow", [(3000 - i, 10 * (i + 1), "done", [])], "succeeded")
    s.job("pay", "/retry", [(1800, 0, "retry", ["server_error", "transient"]),
                            (1790, 0, "retry", ["network"]),
                            (1760, 500, "done", [])], "succeeded")  # recovered in 40.5 s
    s.job("pay", "/limited", [(600, 0, "retry", ["rate_limit"]), (598, 0, "done", [])],
          "succeeded")  # recovered in 2 s
    bad = s.job("pay", "/bad", [(300, 0, "dead_letter", ["client_error"])], "dead")
    s.dead(bad, "pay", timedelta(seconds=300))
    s.job("crm", "/down", [(1200, 0, "fallback", ["server_error"])], "degraded", "cache")
    s.dead("crm-old", "crm", timedelta(hours=3))
    s.dead("crm-replayed", "crm", timedelta(hours=1))
    s.writer.dead_letter_state("crm-replayed", "replayed", "test")


@pytest.fixture(params=["postgresql", "sqlite"])
def seeded(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[Engine]:
    url = database_url if request.param == "postgresql" else f"sqlite:///{tmp_path / 'a.db'}"
    if request.param == "sqlite":
        upgrade(url)
    engine = make_engine(url)
    seed(engine)
    yield engine
    engine.dispose()


def window(integration: str | None = None) -> Window:
    return parse_window("2h", integration, now=NOW + timedelta(seconds=1))


def by(rows: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, Any]]:
    return {tuple(row[k] for k in keys) if len(keys) > 1 else row[keys[0]]: row for row in rows}


def test_seeded_report_has_the_known_answers(seeded: Engine) -> None:
    data = build_report(seeded, window())
    attempts = by(data["attempts"], "integration")
    assert (attempts["pay"]["calls"], attempts["pay"]["failures"], attempts["pay"]["jobs"]) == (
        26, 4, 23)
    assert (attempts["crm"]["calls"], attempts["crm"]["failures"]) == (1, 1)
    assert data["totals"] == {"calls": 27, "failures": 5, "jobs": 24, "succeeded_after_retry": 2}
    classes = {(r["integration"], r["error_class"]): r["failures"]
               for r in data["failures_by_class"]}
    assert classes == {("pay", "server_error"): 1, ("pay", "network"): 1,
                       ("pay", "rate_limit"): 1, ("pay", "client_error"): 1,
                       ("crm", "server_error"): 1}
    pay = by(data["retry_success"], "integration")["pay"]
    assert (pay["jobs"], pay["succeeded_first_try"], pay["succeeded_after_retry"],
            pay["dead_or_failed"]) == (23, 20, 2, 1)
    recovery = by(data["recovery"], "integration")
    assert (recovery["pay"]["recoveries"], recovery["pay"]["mean_ms"],
            recovery["pay"]["max_ms"], recovery["pay"]["failing_since"]) == (
        2, 21250, 40500, None)
    assert recovery["crm"]["recoveries"] == 0
    assert recovery["crm"]["failing_since"] == (NOW - timedelta(seconds=1200)).isoformat()
    assert data["fallbacks"] == [{"integration": "crm", "fallback": "cache", "jobs": 1}]
    assert data["dlq"]["parked"] == 2
    assert data["dlq"]["oldest_age_s"] == 3 * 3600 + 1


def test_seeded_slowest_endpoints_and_timeline(seeded: Engine) -> None:
    data = build_report(seeded, window())
    slowest = [(r["path"], r["calls"], r["p95_ms"], r["max_ms"])
               for r in data["slowest_endpoints"]]
    assert slowest[:2] == [("/retry", 3, 500, 500), ("/slow", 20, 190, 200)]
    timeline = data["failures_over_time"]
    assert timeline["bucket"] == "minute"
    failing = {b["start"]: b["by_class"] for b in timeline["buckets"] if b["failures"]}
    expected: dict[str, dict[str, int]] = {}
    for ago, error_class in ((1800, "server_error"), (1790, "network"), (1200, "server_error"),
                             (600, "rate_limit"), (300, "client_error")):
        start = (NOW - timedelta(seconds=ago)).replace(second=0).isoformat()
        counts = expected.setdefault(start, {})
        counts[error_class] = counts.get(error_class, 0) + 1
    assert failing == expected
    assert timeline["buckets"][0]["start"] == window().since.replace(
        second=0, microsecond=0).isoformat()
    assert sum(b["failures"] for b in timeline["buckets"]) == 5


def test_integration_filter_narrows_every_section(seeded: Engine) -> None:
    data = build_report(seeded, window("crm"))
    assert [r["integration"] for r in data["attempts"]] == ["crm"]
    assert {r["integration"] for r in data["failures_by_class"]} == {"crm"}
    assert data["dlq"]["parked"] == 1
    assert data["totals"]["calls"] == 1
    assert build_report(seeded, window("nobody"))["totals"]["calls"] == 0


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(durations=st.lists(st.integers(0, 10_000), min_size=1, max_size=60))
def test_p95_is_the_nearest_rank_percentile(tmp_path: Path, durations: list[int]) -> None:
    url = f"sqlite:///{tmp_path / 'p95.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(Attempt))
            conn.execute(delete(Job))
        s = Seeder(engine)
        for i, duration in enumerate(durations):
            s.job("x", "/p", [(i, duration, "done", [])], "succeeded")
        row = slowest_endpoints(engine, window())[0]
    finally:
        engine.dispose()
    ordered = sorted(durations)
    rank = -(-95 * len(ordered) // 100)  # ceil(0.95 n), integer arithmetic
    assert (row["calls"], row["p95_ms"], row["max_ms"]) == (
        len(durations), ordered[rank - 1], ordered[-1])


def test_report_after_real_jobs(configure, upstream: FaultServer,
                                redis_client: redis.Redis) -> None:
    configure([integration(upstream.url, retry={"max_attempts": 3, "initial_delay_ms": 10,
                                                "backoff_factor": 1, "max_delay_ms": 10,
                                                "jitter": 0},
                           fallbacks=[{"type": "degraded", "priority": 1}])])
    rt = get_runtime()

    def run(path: str, script: list[Any], method: str = "GET") -> str:
        upstream.set_script(script)
        job = build_job(rt.registry, "shop", method, path)
        final = run_synchronously(job, rt)[-1]
        if final.status == "dead":
            park_dead(rt, job, final, sink=lambda envelope: None)
        return final.status

    assert run("/orders/1", [503, 200]) == "succeeded"
    assert run("/orders/2", ["reset", 502, 200]) == "succeeded"
    assert run("/orders/3", [503, 503, 503]) == "degraded"
    assert run("/orders", [400], "POST") == "dead"
    assert run("/orders/4", []) == "succeeded"
    result = CliRunner().invoke(report_command, ["--since", "30m", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    shop = by(data["attempts"], "integration")["shop"]
    assert (shop["calls"], shop["failures"], shop["jobs"]) == (10, 7, 5)
    classes = {r["error_class"]: r["failures"] for r in data["failures_by_class"]}
    assert classes == {"server_error": 5, "network": 1, "client_error": 1}
    retried = by(data["retry_success"], "integration")["shop"]
    assert (retried["succeeded_first_try"], retried["succeeded_after_retry"],
            retried["degraded"], retried["dead_or_failed"]) == (1, 2, 1, 1)
    assert by(data["recovery"], "integration")["shop"]["recoveries"] == 3
    assert data["fallbacks"] == [{"integration": "shop", "fallback": "degraded", "jobs": 1}]
    assert data["dlq"]["parked"] == 1 and data["dlq"]["oldest_age_s"] >= 0
    assert len(upstream.requests()) == 10


def test_text_and_html_output(configure, upstream: FaultServer, redis_client: redis.Redis,
                              tmp_path: Path) -> None:
    configure([integration(upstream.url, retry={"max_attempts": 2, "initial_delay_ms": 10,
                                                "backoff_factor": 1, "max_delay_ms": 10,
                                                "jitter": 0})])
    rt = get_runtime()
    upstream.set_script([503, 200])
    run_synchronously(build_job(rt.registry, "shop", "GET", "/orders/<b>9</b>"), rt)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(report_command, ["--html", str(page)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "integration=shop  calls=2  failures=1  failure_rate=50.0%" in result.output
    assert f"HTML report written to {page}" in result.output
    html = page.read_text()
    assert "<svg" in html and "Failed calls per hour" in html
    assert "/orders/&lt;b&gt;9&lt;/b&gt;" in html and "<b>9</b>" not in html
    if not chromium.available():
        pytest.skip(chromium.MISSING_REASON)
    shot = chromium.screenshot(page.as_uri(), ARTIFACTS / "report.png", width=1000, height=1400,
                               budget_ms=500)
    assert shot.stat().st_size > 10_000
    shutil.copy(page, ARTIFACTS / "report.html")


@pytest.mark.parametrize("since", ["abc", "5x", "", "-3h", "2999-01-01T00:00:00Z"])
def test_bad_since_exits_2_with_one_sentence(configure, since: str) -> None:
    configure()
    result = CliRunner().invoke(report_command, ["--since", since])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith(".")


def test_unreadable_audit_trail_exits_1_with_a_sentence(configure) -> None:
    configure(DATABASE_URL="postgresql://postgres:hunter2@127.0.0.1:1/none")
    result = CliRunner().invoke(report_command, ["--since", "1h"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Cannot read the audit trail at ")
    assert "recovery-cli db upgrade" in result.output and "hunter2" not in result.output


@pytest.mark.parametrize("command", [report_command, monitor_command, simulate_command])
def test_every_command_has_help_with_an_example(command: Any) -> None:
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "  recovery-cli " in result.output
