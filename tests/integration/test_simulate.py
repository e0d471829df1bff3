"""`recovery-cli simulate` against real Redis and PostgreSQL: every scenario, read back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select

from recovery.audit.db import make_engine
from recovery.audit.models import DeadLetter
from recovery.audit.queries import get_job, list_transitions
from recovery.cli.ops import simulate_command
from recovery.core.errors import ErrorCategory
from recovery.demo.simulate import ERROR_TYPES
from tests.integration.conftest import _admin

pytestmark = pytest.mark.integration

# error type -> outcome, strategy, attempts, calls, fallback, breaker tripped, dead-lettered
EXPECTED: dict[str, tuple[str, str, int, int, str | None, bool, bool]] = {
    "network": ("succeeded", "network-retry", 3, 3, None, False, False),
    "rate_limit": ("succeeded", "rate-limit-backoff", 2, 2, None, False, False),
    "server_error": ("degraded", "server-error-circuit", 3, 3, "degraded", True, False),
    "authentication": ("succeeded", "auth-token-refresh", 1, 2, None, False, False),
    "client_error": ("dead", "dead-letter-queue", 1, 1, None, False, True),
    "transient": ("succeeded", "network-retry", 3, 3, None, False, False),
    "unknown": ("dead", "dead-letter-queue", 1, 1, None, False, True),
    "response_too_large": ("dead", "dead-letter-queue", 1, 1, None, False, True),
}


def simulate(*args: str) -> Any:
    return CliRunner().invoke(simulate_command, list(args), catch_exceptions=False)


def simulate_json(*args: str) -> dict[str, Any]:
    result = simulate(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def prefix_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}*", count=1000))


def test_every_error_category_has_a_scenario() -> None:
    assert sorted(ERROR_TYPES) == sorted(category.value for category in ErrorCategory)


@pytest.mark.parametrize("error_type", ERROR_TYPES)
def test_scenario_recovers_as_the_policy_says_and_is_audited(
        configure, redis_client: redis.Redis, database_url: str, error_type: str) -> None:
    configure()
    data = simulate_json("--error-type", error_type)
    outcome, strategy, attempts, calls, fallback, tripped, dead = EXPECTED[error_type]
    assert (data["outcome"], data["strategy"], data["attempts"], data["calls"]) == (
        outcome, strategy, attempts, calls)
    assert (data["fallback_used"], data["breaker_tripped"], data["queued_for_later"]) == (
        fallback, tripped, dead)
    assert data["success"] is (outcome in ("succeeded", "degraded"))
    assert data["mode"] == "services"
    # A refused connection never reaches the upstream; every other call does.
    assert data["upstream_requests"] == calls - (error_type == "network")
    assert data["integration"] == f"simulate-{error_type.replace('_', '-')}"
    engine = make_engine(database_url)
    try:
        job = get_job(engine, data["job_id"])
        assert job is not None and job["status"] == outcome
        call_rows = [row for row in job["attempts"] if row["kind"] == "call"]
        assert len(call_rows) == calls
        transitions = list_transitions(engine, data["integration"])
        assert any(t["to_state"] == "open" for t in transitions) is tripped
        with engine.connect() as conn:
            states = conn.execute(select(DeadLetter.state).where(
                DeadLetter.job_id == data["job_id"])).scalars().all()
    finally:
        engine.dispose()
    # A simulated dead letter is recorded, then marked purged so nobody replays it.
    assert states == (["purged"] if dead else [])
    assert data["redis_prefix"].startswith("simulate-")
    assert prefix_keys(redis_client, data["redis_prefix"]) == []


def test_rate_limit_waits_for_retry_after(configure, redis_client: redis.Redis) -> None:
    configure()
    data = simulate_json("--error-type", "rate_limit")
    assert data["steps"][0]["status"] == "retry"
    assert data["steps"][0]["countdown_s"] == pytest.approx(1.0)
    assert data["recovery_time_ms"] >= 1000


def test_fewer_attempts_than_the_outage_fall_back(configure, redis_client: redis.Redis) -> None:
    configure()
    data = simulate_json("--error-type", "network", "--max-attempts", "2")
    assert (data["outcome"], data["attempts"], data["calls"]) == ("degraded", 2, 2)
    assert data["fallback_used"] == "degraded" and data["success"] is True
    single = simulate_json("--error-type", "server_error", "--max-attempts", "1")
    assert (single["attempts"], single["breaker_tripped"]) == (1, True)


def test_text_output_and_verbose_steps(configure, redis_client: redis.Redis) -> None:
    configure()
    result = simulate("--error-type", "transient", "--verbose")
    assert result.exit_code == 0, result.output
    assert "attempt 1: retry" in result.output and "HTTP 408" in result.output
    assert "attempt 2: retry" in result.output and "HTTP 503" in result.output
    for line in ("success:          yes", "attempts:         3 (3 calls to the upstream)",
                 "breaker tripped:  no", "queued for later: no"):
        assert line in result.output


def test_embedded_mode_leaves_the_configured_database_alone(
        configure, redis_client: redis.Redis, database_url: str) -> None:
    configure()
    data = simulate_json("--error-type", "server_error", "--embedded")
    assert (data["mode"], data["outcome"], data["breaker_tripped"]) == (
        "embedded", "degraded", True)
    engine = make_engine(database_url)
    try:
        assert get_job(engine, data["job_id"]) is None
    finally:
        engine.dispose()


def test_bad_options_exit_2(configure) -> None:
    configure()
    for args in (["--error-type", "gremlins"], ["--error-type", "network", "--max-attempts", "0"],
                 []):
        result = CliRunner().invoke(simulate_command, args)
        assert result.exit_code == 2, (args, result.output)


def test_unreachable_or_unmigrated_services_exit_2(
        configure, monkeypatch: pytest.MonkeyPatch) -> None:
    configure()
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
    result = CliRunner().invoke(simulate_command, ["--error-type", "network"])
    assert result.exit_code == 2
    assert "DATABASE_URL" in result.output and "cannot be reached" in result.output
    name = f"t_unmigrated_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/{name}")
        result = CliRunner().invoke(simulate_command, ["--error-type", "network"])
        assert result.exit_code == 2
        assert "no audit tables" in result.output and "db upgrade" in result.output
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

