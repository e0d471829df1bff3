"""`replay-dlq`'s progress bar counts the selected entries; listings never print an original."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
import redis

import recovery.cli.main  # noqa: F401  (loads the CLI before its dlq commands)
from recovery.cli.dlq import dlq_group, quarantine_group, replay_dlq_command
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.engine.runtime import Runtime
from tests.integration.test_dlq_cli import run
from tests.integration.test_dlq_support import dlq_ids, dlq_runtime, make_envelope, park_all

__all__ = ["dlq_runtime"]


def test_the_progress_bar_counts_the_entries_selected_not_the_whole_dlq(
        dlq_runtime: Runtime, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    park_all([make_envelope("shop") for _ in range(7)] + [make_envelope("crm") for _ in range(3)])
    bars: list[dict[str, Any]] = []
    real = click.progressbar

    def recording(*args: Any, **kwargs: Any) -> Any:
        bar = real(*args, **kwargs)
        seen = {"length": kwargs.get("length"), "updates": 0}
        bars.append(seen)
        update = bar.update

        def counted(steps: int, current_item: Any = None) -> None:
            seen["updates"] += steps
            update(steps, current_item)

        bar.update = counted  # type: ignore[method-assign]
        return bar

    monkeypatch.setattr("recovery.cli.dlq._terminal", lambda: True)
    monkeypatch.setattr("recovery.cli.dlq.click.progressbar", recording)
    result = run(replay_dlq_command, "--yes", "--integration", "crm")
    assert result.exit_code == 0 and "Done: replayed 3" in result.output
    assert bars == [{"length": 3, "updates": 3}]
    assert len(dlq_ids(redis_client, dlq_runtime)) == 7


def test_show_and_quarantine_list_never_print_the_original(
        dlq_runtime: Runtime, redis_client: redis.Redis) -> None:
    from recovery.core.message import JobSpec, new_job_id, utc_now_iso
    from recovery.dlq.envelope import envelope_for

    job = JobSpec(job_id=new_job_id(), integration="shop", method="POST", path="/orders",
                  json={"password": "hunter2-b0dy"}, params={"api_key": "K1-p4ram"},
                  idempotency_key="k-1", enqueued_at=utc_now_iso(), replay_count=3)
    envelope = envelope_for(job, categories=["server_error"], last_status=503,
                            message="HTTP 503", attempts=1, dead_at=utc_now_iso())
    park_all([envelope])
    shown = run(dlq_group, "show", job.job_id, "--json").output
    listed = run(dlq_group, "list", "--json").output
    for output in (shown, listed):
        assert "hunter2-b0dy" not in output and "K1-p4ram" not in output
        assert "original" not in output
    assert "[REDACTED]" in json.dumps(json.loads(shown)["body"])
    replay_dlq(dlq_runtime, ReplayOptions())  # DLQ_MAX_RETRIES is 3: quarantined
    quarantined = run(quarantine_group, "list", "--json").output
    assert job.job_id in quarantined and "hunter2-b0dy" not in quarantined
    assert "original" not in quarantined
    from recovery.ops.console.dlqview import quarantine_rows

    console = json.dumps(quarantine_rows(dlq_runtime))
    assert job.job_id in console and "hunter2-b0dy" not in console and "original" not in console
