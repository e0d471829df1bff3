"""The producer and operator CLI against real Redis and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import redis
from click.testing import CliRunner

from recovery.audit.queries import list_transitions
from recovery.cli.main import main
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from tests.integration.test_job_flow import integration, queue_depth


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_enqueue_prints_job_id_and_jobs_show_reads_it(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    configure([integration(upstream.url)])
    before = queue_depth(redis_client)
    result = run("enqueue", "shop", "post", "/orders", "--json", '{"id": 3}',
                 "--param", "expand=all", "--header", "Authorization: Bearer top-secret",
                 "--idempotency-key", "order-3")
    assert result.exit_code == 0, result.output
    job_id = result.output.strip()
    assert queue_depth(redis_client) == before + 1
    shown = run("jobs", "show", job_id, "--json")
    data = json.loads(shown.output)
    assert (data["id"], data["integration"], data["status"]) == (job_id, "shop", "queued")
    assert data["attempts"] == [] and data["method"] == "POST"
    listed = json.loads(run("jobs", "list", "--integration", "shop", "--json").output)
    assert [row["id"] for row in listed] == [job_id]
    assert "top-secret" not in shown.output


def test_enqueue_bad_input_exits_2_with_a_sentence_and_enqueues_nothing(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    configure([integration(upstream.url)])
    before = queue_depth(redis_client)
    cases = [
        (["enqueue", "nope", "GET", "/x"], "Unknown integration 'nope'"),
        (["enqueue", "shop", "GET", "//evil/x"], "Error: "),
        (["enqueue", "shop", "POST", "/x", "--json", "{broken"], "not valid JSON"),
        (["enqueue", "shop", "GET", "/x", "--header", "NoColon"], "must look like"),
        (["enqueue", "shop", "GET", "/x", "--param", "novalue"], "must look like"),
        (["enqueue", "shop", "BREW", "/x"], "is not an HTTP method"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
    assert queue_depth(redis_client) == before
    assert json.loads(run("jobs", "list", "--json").output) == []


def test_jobs_show_unknown_id_exits_1(configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url)])
    result = CliRunner().invoke(main, ["jobs", "show", "no-such-job"])
    assert result.exit_code == 1
    assert "No job 'no-such-job'" in result.output


def test_test_command_runs_one_resilient_call_synchronously(
        configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url)])
    upstream.set_script([503, 200])
    result = run("test", "shop", "GET", "/ping", "--verbose")
    assert result.exit_code == 0, result.output
    assert "attempt 1: retry" in result.output
    assert "outcome: succeeded  attempts: 2" in result.output


def test_breaker_status_open_close_are_audited(configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url)])
    status = json.loads(run("breaker", "status", "--json").output)
    assert [(row["integration"], row["state"]) for row in status] == [("shop", "closed")]
    assert "now open" in run("breaker", "open", "shop", "--reason", "vendor window").output
    status = json.loads(run("breaker", "status", "--json").output)
    assert status[0]["state"] == "open" and status[0]["time_to_half_open_s"] > 0
    assert "now closed" in run("breaker", "close", "shop").output
    moves = [(t["from_state"], t["to_state"], t["reason"])
             for t in reversed(list_transitions(get_runtime().engine, "shop"))]
    assert moves[0][:2] == ("closed", "open") and "vendor window" in moves[0][2]
    assert moves[1][:2] == ("open", "closed")
    bad = CliRunner().invoke(main, ["breaker", "open", "nope"])
    assert bad.exit_code == 2 and "Unknown integration 'nope'" in bad.output


def test_bad_setting_is_one_sentence_exit_2(configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url)], MAX_RETRIES="abc")
    result = CliRunner().invoke(main, ["jobs", "list"])
    assert result.exit_code == 2
    assert "MAX_RETRIES must be a whole number, got 'abc'" in result.output
    assert "Traceback" not in result.output


def test_enqueue_with_a_key_reused_for_another_request_exits_2_and_enqueues_nothing(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    configure([integration(upstream.url)])
    first = run("enqueue", "shop", "POST", "/orders", "--json", '{"id": 3}',
                "--idempotency-key", "order-3")
    assert first.exit_code == 0, first.output
    before = queue_depth(redis_client)
    reused = CliRunner().invoke(main, ["enqueue", "shop", "POST", "/orders", "--json",
                                       '{"id": 4}', "--idempotency-key", "order-3"])
    assert reused.exit_code == 2, reused.output
    assert ("Idempotency key 'order-3' was already used with a different request on "
            "integration 'shop'; use a new key or resend the same request.") in reused.output
    assert queue_depth(redis_client) == before
    assert len(json.loads(run("jobs", "list", "--json").output)) == 1
