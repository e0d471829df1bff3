"""Results and callbacks through real workers (issue 14 item 1).

The outcome of each job is read back through the handle, `recovery.result` and the CLI; the
producer's callback tasks run in the worker (`tests.integration.callbacks`) and record what
they received in Redis. The upstream's body reaches the result store and the callback, never
the audit trail or a log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import text

import recovery
from recovery.cli.main import main as cli
from recovery.demo.faultserver import FaultServer
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.dlq.store import EntryFilter
from recovery.engine.producer import EnqueueError
from recovery.engine.runtime import get_runtime
from tests.integration.callbacks import FAILURE_TASK, QUEUE, SUCCESS_TASK, calls_key
from tests.integration.conftest import wait_for_status
from tests.integration.test_job_flow import integration, queue_depth

BODY_MARK = "b0dy-m4rk-7731"
FINAL = {"succeeded", "degraded", "duplicate", "failed", "dead"}
CALLBACKS = "tests.integration.callbacks"


def start(configure: Any, start_worker: Any, url: str, **env: str) -> Any:
    settings = {"CALLBACK_QUEUE": QUEUE, "RESULT_TTL": "120000", "LOG_LEVEL": "info", **env}
    environ = configure([integration(url, retry={"max_attempts": 2, "initial_delay_ms": 100,
                                                 "backoff_factor": 2, "max_delay_ms": 500,
                                                 "jitter": 0},
                                     fallbacks=[{"type": "default", "value": {"stand": "in"},
                                                 "priority": 1}])],
                        **settings)
    return start_worker(environ, queues=f"integrations,maintenance,{QUEUE}", include=CALLBACKS)


def callback_calls(client: redis.Redis, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The callbacks recorded so far, once there are at least `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        calls = [json.loads(raw) for raw in client.lrange(calls_key(), 0, -1)]
        if len(calls) >= count or time.monotonic() > deadline:
            assert len(calls) >= count, f"only {len(calls)} callbacks arrived: {calls}"
            return calls
        time.sleep(0.1)


def rows_mentioning(mark: str) -> dict[str, int]:
    """How many rows of each audit table carry `mark` anywhere."""
    found: dict[str, int] = {}
    with get_runtime().engine.connect() as conn:
        tables = conn.execute(text("SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = 'public'")).scalars().all()
        for table in tables:
            count = conn.execute(text(f'SELECT count(*) FROM "{table}" AS r '
                                      "WHERE r::text LIKE :mark"), {"mark": f"%{mark}%"}).scalar()
            if count:
                found[table] = int(count)
    return found


def wait_for_attempts(job_id: str, count: int) -> dict[str, Any]:
    """The audit trail's job once `count` call attempts are in it (the spool drains async)."""
    deadline = time.monotonic() + 30
    while True:
        job = wait_for_status(get_runtime().engine, job_id, FINAL)
        calls = [row for row in job["attempts"] if row["kind"] == "call"]
        if len(calls) >= count or time.monotonic() > deadline:
            assert len(calls) >= count, job
            return job
        time.sleep(0.2)


def test_a_succeeded_job_gives_its_body_to_the_handle_the_cli_and_on_success(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    worker = start(configure, start_worker, upstream.url, RESULT_MAX_BYTES="1000")
    handle = recovery.enqueue("shop", "POST", "/charges", json={"amount": 5, "ref": BODY_MARK},
                              on_success=SUCCESS_TASK, on_failure=FAILURE_TASK)
    assert isinstance(handle, str) and handle.job_id == str(handle)
    outcome = handle.get(timeout=60)
    assert (outcome.status, outcome.http_status, outcome.fallback) == ("succeeded", 200, None)
    assert outcome.body["json"] == {"amount": 5, "ref": BODY_MARK}
    assert outcome.body["path"] == "/charges" and outcome.ok
    assert recovery.result(handle) == outcome
    assert 100 <= redis_client.ttl(get_runtime().results.key(handle)) <= 120

    [call] = callback_calls(redis_client, 1)
    assert call == {"callback": "on_success", "task_id": f"{handle}.on_success.0",
                    "outcome": outcome.to_dict()}
    sent = upstream.requests()
    assert len(sent) == 1 and sent[0]["path"] == "/charges"

    printed = CliRunner().invoke(cli, ["jobs", "result", handle, "--json", "--wait", "5"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == outcome.to_dict()

    wait_for_attempts(handle, 1)
    assert rows_mentioning(BODY_MARK) == {}
    assert BODY_MARK not in worker.log_path.read_text(errors="replace")


def test_an_oversized_body_is_not_kept_and_the_result_says_so(
        configure, upstream: FaultServer, start_worker) -> None:
    start(configure, start_worker, upstream.url, RESULT_MAX_BYTES="1000")
    handle = recovery.enqueue("shop", "POST", "/bulk", json={"pad": "x" * 2000})
    outcome = handle.get(timeout=60)
    assert outcome.status == "succeeded" and outcome.http_status == 200
    assert outcome.body is None
    assert outcome.body_omitted is not None and outcome.body_omitted.startswith(
        "The response body was ")
    assert outcome.body_omitted.endswith(
        "bytes, over RESULT_MAX_BYTES (1000 bytes), so it was not kept; raise "
        "RESULT_MAX_BYTES or have the upstream return less.")
    printed = CliRunner().invoke(cli, ["jobs", "result", handle])
    assert printed.exit_code == 0
    assert "body: not kept. The response body was" in printed.output


def test_a_degraded_job_names_its_fallback_and_gives_the_fallback_body(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    start(configure, start_worker, upstream.url)
    upstream.set_mode("5xx", status=503)
    handle = recovery.enqueue("shop", "GET", "/prices", on_success=SUCCESS_TASK)
    outcome = handle.get(timeout=60)
    assert (outcome.status, outcome.fallback, outcome.body) == ("degraded", "default",
                                                                {"stand": "in"})
    assert outcome.strategy == "graceful-degradation" and outcome.attempts == 2
    [call] = callback_calls(redis_client, 1)
    assert call["callback"] == "on_success" and call["outcome"]["status"] == "degraded"


def test_a_duplicate_returns_the_original_answer_without_calling_again(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    start(configure, start_worker, upstream.url)
    first = recovery.enqueue("shop", "POST", "/charges", json={"n": 1},
                             idempotency_key="charge-41")
    original = first.get(timeout=60)
    second = recovery.enqueue("shop", "POST", "/charges", json={"n": 1},
                              idempotency_key="charge-41", on_success=SUCCESS_TASK)
    repeated = second.get(timeout=60)
    assert repeated.status == "duplicate" and repeated.duplicate_of == first
    assert (repeated.body, repeated.http_status) == (original.body, 200)
    assert len(upstream.requests()) == 1
    [call] = callback_calls(redis_client, 1)
    assert call["outcome"]["status"] == "duplicate" and call["task_id"].startswith(second)


def test_a_dead_job_calls_on_failure_once_and_on_success_after_a_replay_succeeds(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    worker = start(configure, start_worker, upstream.url)
    upstream.set_script([400])
    handle = recovery.enqueue("shop", "POST", "/charges", json={"n": 2},
                              on_success=SUCCESS_TASK, on_failure=FAILURE_TASK)
    dead = handle.get(timeout=60)
    assert (dead.status, dead.http_status, dead.body, dead.error_category) == (
        "dead", 400, None, "client_error")
    assert dead.error is not None and "dead-letter queue" in dead.error
    [failed] = callback_calls(redis_client, 1)
    assert failed == {"callback": "on_failure", "task_id": f"{handle}.on_failure.0",
                      "outcome": dead.to_dict()}
    printed = CliRunner().invoke(cli, ["jobs", "result", handle])
    assert printed.exit_code == 1 and "status=dead" in printed.output

    upstream.set_script([400])  # the first replay dies again: on_failure is not called again
    replay_dlq(get_runtime(), ReplayOptions(filter=EntryFilter(job_id=handle)))
    again = wait_for_result(handle, replay_count=1)
    assert again.status == "dead"
    wait_for_log(worker.log_path, f"{handle}", "JobDeadLettered", count=2)
    assert f"{handle}.on_failure.1" not in worker.log_path.read_text(errors="replace")

    replay_dlq(get_runtime(), ReplayOptions(filter=EntryFilter(job_id=handle)))
    replayed = wait_for_result(handle, replay_count=2)
    assert (replayed.status, replayed.http_status) == ("succeeded", 200)
    assert replayed.body["json"] == {"n": 2}  # the replay sent the original request
    calls = callback_calls(redis_client, 2)
    assert [(c["callback"], c["task_id"]) for c in calls] == [
        ("on_failure", f"{handle}.on_failure.0"), ("on_success", f"{handle}.on_success.2")]
    assert calls[1]["outcome"] == replayed.to_dict()


def wait_for_result(job_id: str, *, replay_count: int, timeout: float = 60.0) -> Any:
    """The job's outcome once one of the given replay is written (a new one replaces it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = recovery.result(job_id)
        if found is not None and found.replay_count == replay_count:
            return found
        assert time.monotonic() < deadline, f"last result: {found}"
        time.sleep(0.1)


def wait_for_log(path: Path, *needles: str, count: int, timeout: float = 60.0) -> None:
    """Until `count` lines of the worker's log carry every needle."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text(errors="replace").splitlines()
        if sum(all(n in line for n in needles) for line in lines) >= count:
            return
        assert time.monotonic() < deadline, "\n".join(lines[-30:])
        time.sleep(0.1)


@pytest.mark.parametrize(("option", "name", "sentence"), [
    ("on_success", "not a task!", "on_success must name a Celery task of your app, dotted "
     "Python names of at most 200 characters such as 'myapp.tasks.charge_done'; got "
     "'not a task!'."),
    ("on_failure", "x" * 201, "on_failure must name a Celery task of your app, dotted Python "
     "names of at most 200 characters such as 'myapp.tasks.charge_done'; got "
     f"'{'x' * 60}'."),
    ("on_success", 42, "on_success must name a Celery task of your app, dotted Python names "
     "of at most 200 characters such as 'myapp.tasks.charge_done'; got '42'."),
    ("on_failure", "tasks.integration.call", "on_failure names 'tasks.integration.call', a "
     "task of this system itself; name a task of your own app that takes the outcome as its "
     "argument."),
])
def test_a_bad_callback_is_refused_at_enqueue_and_nothing_is_sent(
        configure, upstream: FaultServer, redis_client: redis.Redis, option: str, name: Any,
        sentence: str) -> None:
    configure([integration(upstream.url)])
    with pytest.raises(EnqueueError) as refused:
        recovery.enqueue("shop", "GET", "/x", **{option: name})
    assert str(refused.value) == sentence
    assert queue_depth(redis_client) == 0
    with get_runtime().engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
    printed = CliRunner().invoke(cli, ["enqueue", "shop", "GET", "/x",
                                       f"--{option.replace('_', '-')}", str(name)])
    assert printed.exit_code == 2 and queue_depth(redis_client) == 0


def test_jobs_result_without_a_result_says_so(configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url)])
    printed = CliRunner().invoke(cli, ["jobs", "result", "no-such-job", "--wait", "0.2"])
    assert printed.exit_code == 1
    assert printed.output.strip() == (
        "Error: Job 'no-such-job' has no result after waiting 0.2 s: it has not finished, or "
        "its result expired (RESULT_TTL); 'jobs show' reads its state from the audit trail.")
    with pytest.raises(recovery.ResultTimeout) as timed_out:
        recovery.JobHandle("no-such-job").get(timeout=0.2)
    assert str(timed_out.value) == (
        "Job no-such-job had not finished after 0.2 s (or its result expired after RESULT_TTL); "
        "wait longer, or look it up with `recovery-cli jobs show`.")
