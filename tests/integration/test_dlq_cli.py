"""`recovery-cli dlq ...` and `replay-dlq` against real Redis and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import redis
from click.testing import CliRunner, Result

import recovery.cli.main  # noqa: F401  (loads the CLI before its dlq commands)
from recovery.cli.dlq import dlq_group, replay_dlq_command
from recovery.engine.runtime import Runtime
from tests.integration.test_dlq_support import (
    bodies,
    dlq_ids,
    dlq_runtime,
    key,
    kombu_message,
    make_envelope,
    park_all,
    raw_list,
    work_jobs,
)

__all__ = ["dlq_runtime"]


def run(command: click.Command, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(command, list(args), input=stdin, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_list_and_show_read_without_consuming_and_hide_secrets(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    shop, crm = park_all([make_envelope("shop"), make_envelope("crm", categories=("rate_limit",))])
    leaky = make_envelope().sealed_message() | {"headers": {"Authorization": "Bearer s3cr3t-t0ken"},
                                            "body": {"password": "hunter2-pass"}}
    redis_client.lpush(key(dlq_runtime, "dlq"), kombu_message(json.dumps(leaky)))
    listed = as_json(run(dlq_group, "list", "--json"))
    assert [row["job_id"] for row in listed] == [shop.job_id, crm.job_id, leaky["job_id"]]
    assert [row["job_id"] for row in as_json(run(dlq_group, "list", "--integration", "crm",
                                                 "--json"))] == [crm.job_id]
    assert [row["job_id"] for row in as_json(run(dlq_group, "list", "--error-class",
                                                 "rate_limit", "--json"))] == [crm.job_id]
    text = run(dlq_group, "list").output
    assert "3 entries." in text and "s3cr3t" not in text
    shown = run(dlq_group, "show", leaky["job_id"], "--json")
    assert "s3cr3t-t0ken" not in shown.output and "hunter2" not in shown.output
    assert as_json(shown)["idempotency_key"] == leaky["idempotency_key"]
    assert len(dlq_ids(redis_client, dlq_runtime)) == 3
    missing = run(dlq_group, "show", "no-such-job")
    assert missing.exit_code == 1 and "No entry of job 'no-such-job'" in missing.output


def test_replay_without_yes_and_without_a_terminal_refuses_with_exit_2(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    park_all([make_envelope()])
    result = run(replay_dlq_command)
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "pass --yes" in result.output
    assert len(dlq_ids(redis_client, dlq_runtime)) == 1


def test_replay_bad_arguments_exit_2_and_change_nothing(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    park_all([make_envelope()])
    for args in (["--since", "yesterday"], ["--integration", "nope"], ["--limit", "0"],
                 ["--rate", "0"], ["--error-class", "bogus"], ["--since", "99999999w"]):
        result = run(replay_dlq_command, *args, "--yes")
        assert result.exit_code == 2, (args, result.output)
    assert len(dlq_ids(redis_client, dlq_runtime)) == 1
    assert work_jobs(redis_client, dlq_runtime) == []


def test_replay_dry_run_json_plans_and_real_run_moves(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    parked = park_all([make_envelope("shop"), make_envelope("crm"),
                       make_envelope("shop", replay_count=3)])
    plan = as_json(run(replay_dlq_command, "--dry-run", "--json", "--integration", "shop"))
    assert (plan["dry_run"], plan["replayed"], plan["quarantined"]) == (True, 1, 1)
    assert [e["action"] for e in plan["entries"]] == ["replay", "quarantine"]
    assert len(dlq_ids(redis_client, dlq_runtime)) == 3
    text = run(replay_dlq_command, "--dry-run", "--job", parked[1].job_id).output
    assert f"would replay     {parked[1].job_id}" in text and "nothing changed" in text
    done = run(replay_dlq_command, "--yes", "--since", "1h")
    assert done.exit_code == 0, done.output
    assert "Done: replayed 2, skipped 0, quarantined 1, failed 0." in done.output
    assert [job["job_id"] for job in work_jobs(redis_client, dlq_runtime)] == [
        parked[0].job_id, parked[1].job_id]


def test_replay_on_a_terminal_asks_first_and_a_no_changes_nothing(
        dlq_runtime: Runtime, redis_client: redis.Redis, monkeypatch) -> None:
    park_all([make_envelope(), make_envelope(replay_count=3)])
    monkeypatch.setattr("recovery.cli.dlq._interactive", lambda: True)
    declined = run(replay_dlq_command, stdin="n\n")
    assert "Replay 1 entries, quarantine 1 and skip 0? [y/N]" in declined.output
    assert declined.exit_code == 0 and "Nothing was replayed." in declined.output
    assert len(dlq_ids(redis_client, dlq_runtime)) == 2
    accepted = run(replay_dlq_command, stdin="y\n")
    assert accepted.exit_code == 0 and "Done: replayed 1" in accepted.output
    assert dlq_ids(redis_client, dlq_runtime) == []


def test_progress_bar_only_on_a_terminal(
        dlq_runtime: Runtime, redis_client: redis.Redis, monkeypatch) -> None:
    park_all([make_envelope() for _ in range(3)])
    quiet = run(replay_dlq_command, "--yes", "--limit", "1")
    assert "Replaying" not in quiet.output and quiet.exit_code == 0
    monkeypatch.setattr("recovery.cli.dlq._terminal", lambda: True)
    shown = run(replay_dlq_command, "--yes")
    assert "Replaying" in shown.output and "Done: replayed 2" in shown.output


def test_replay_exit_1_when_entries_fail_to_move(
        dlq_runtime: Runtime, redis_client: redis.Redis, monkeypatch) -> None:
    park_all([make_envelope()])

    def broker_down(jobs: object) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr("recovery.dlq.replay.publish_jobs", broker_down)
    result = CliRunner().invoke(replay_dlq_command, ["--yes"])
    assert result.exit_code == 1 and "failed 1" in result.output
    assert len(dlq_ids(redis_client, dlq_runtime)) == 1


def test_purge_refuses_without_yes_and_purges_only_what_matches(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    old = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    parked = park_all([make_envelope("shop", dead_at=old), make_envelope("crm", dead_at=old),
                       make_envelope("shop")], dlq_runtime)
    refused = run(dlq_group, "purge", "--older-than", "7d")
    assert refused.exit_code == 2
    assert refused.output == "Error: Purging deletes dead letters for good; pass --yes to " \
                             "confirm.\n"
    assert len(dlq_ids(redis_client, dlq_runtime)) == 3
    bad = run(dlq_group, "purge", "--older-than", "soon", "--yes")
    assert bad.exit_code == 2 and "--older-than" in bad.output
    done = run(dlq_group, "purge", "--older-than", "7d", "--integration", "shop", "--yes")
    assert done.exit_code == 0 and "Purged 1 entries; 2 stay" in done.output
    assert dlq_ids(redis_client, dlq_runtime) == [parked[1].job_id, parked[2].job_id]
    from tests.integration.test_dlq_replay import dead_letter_state

    assert dead_letter_state(dlq_runtime, parked[0].job_id) == "purged"
    redis_client.lpush(key(dlq_runtime, "dlq"), b"junk")
    assert run(dlq_group, "purge", "--yes").exit_code == 0
    assert raw_list(redis_client, dlq_runtime, "dlq") == []


def test_quarantine_list_and_release(dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    capped = park_all([make_envelope(replay_count=3)], dlq_runtime)[0]
    redis_client.lpush(key(dlq_runtime, "dlq"), b"junk")
    run(replay_dlq_command, "--yes")
    rows = as_json(run(dlq_group, "quarantine", "list", "--json"))
    assert [row["job_id"] for row in rows] == [capped.job_id, None]
    assert "replay cap reached" in rows[0]["reason"] and rows[1]["raw"] == "junk"
    assert "2 quarantined." in run(dlq_group, "quarantine", "list").output
    released = run(dlq_group, "quarantine", "release", capped.job_id)
    assert released.exit_code == 0, released.output
    assert "queued again as replay 4" in released.output
    jobs = work_jobs(redis_client, dlq_runtime)
    assert [(j["job_id"], j["replay_count"]) for j in jobs] == [(capped.job_id, 4)]
    assert [r["job_id"] for r in bodies(redis_client, dlq_runtime, "dlq.quarantine")] == [None]
    again = run(dlq_group, "quarantine", "release", capped.job_id)
    assert again.exit_code == 1 and "No quarantined entry" in again.output


def test_a_malformed_quarantined_entry_cannot_be_released(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    redis_client.lpush(key(dlq_runtime, "dlq"), kombu_message('{"job_id": "junk-1"}'))
    assert run(replay_dlq_command, "--yes").exit_code == 0
    refused = run(dlq_group, "quarantine", "release", "junk-1")
    assert refused.exit_code == 1 and "quarantined as malformed" in refused.output
    assert [r["job_id"] for r in bodies(redis_client, dlq_runtime, "dlq.quarantine")] == [
        "junk-1"]
    assert work_jobs(redis_client, dlq_runtime) == []


def test_unreachable_redis_is_one_sentence_and_exit_1(
        dlq_runtime: Runtime, configure) -> None:
    configure(REDIS_URL="redis://127.0.0.1:1/15")
    for args in (["list"], ["show", "x"], ["purge", "--yes"], ["quarantine", "list"]):
        result = CliRunner().invoke(dlq_group, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: Could not reach Redis at redis://127.0.0.1:1/15")
    result = CliRunner().invoke(replay_dlq_command, ["--yes"])
    assert result.exit_code == 1 and "Could not reach Redis" in result.output


def test_every_command_help_has_an_example() -> None:
    commands: list[click.Command] = [replay_dlq_command, dlq_group]
    commands += list(dlq_group.commands.values())
    quarantine = dlq_group.commands["quarantine"]
    assert isinstance(quarantine, click.Group)
    commands += list(quarantine.commands.values())
    for command in commands:
        assert "recovery-cli " in (command.help or ""), command.name
