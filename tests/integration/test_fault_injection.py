"""No job ever disappears: whatever a collaborator of a delivery raises, the job ends final
(and, when dead, in the DLQ exactly once) or goes back to its queue, and no audit row is left
`running`. Real worker processes, real Redis and PostgreSQL, a local upstream; the faults are
injected by `tests.integration.faults`, loaded into the worker with `--include`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

import recovery
from recovery.celery_app import app
from recovery.core.message import JobSpec, Progress, new_job_id, task_reprs, utc_now_iso
from recovery.demo.faultserver import FaultServer
from recovery.dlq.store import decode_body
from recovery.engine.runtime import get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.faults import ENV, FAULT_SECRET
from tests.integration.test_dlq_support import raw_list
from tests.integration.test_job_flow import integration

pytestmark = pytest.mark.integration

FINAL = {"succeeded", "degraded", "duplicate", "failed", "dead"}
HOOK = "tests.integration.faults"
HEADER_SECRET = "h3ader-s3cret-v4lue"
FAST_RETRY = {"max_attempts": 1, "initial_delay_ms": 100, "backoff_factor": 2,
              "max_delay_ms": 1000, "jitter": 0}


def _wait(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def _broker_holds(client: redis.Redis, job_id: str) -> list[str]:
    """Where the broker still holds a message of this job: its queue or the unacked hash."""
    prefix = get_runtime().settings.redis_key_prefix
    where = [name for name in ("integrations",)
             if any(job_id.encode() in raw for raw in client.lrange(f"{prefix}{name}", 0, -1))]
    unacked = client.hvals(f"{prefix}unacked")
    return where + (["unacked"] if any(job_id.encode() in raw for raw in unacked) else [])


def _dlq_entries(client: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """The job's dead-letter envelopes (kombu keeps the body base64-encoded)."""
    bodies = [decode_body(raw)[0] for raw in raw_list(client, get_runtime(), "dlq")]
    return [body for body in bodies if isinstance(body, dict) and body.get("job_id") == job_id]


def _running_rows() -> list[str]:
    with get_runtime().engine.connect() as conn:
        rows = conn.execute(text("SELECT id FROM jobs WHERE status = 'running'"))
        return [row[0] for row in rows]


def assert_final(client: redis.Redis, job_id: str, worker_log: Path,
                 expected: set[str]) -> dict[str, Any]:
    """The job is final as expected, parked once when dead, acked, and shows no secret."""
    job = wait_for_status(get_runtime().engine, job_id, FINAL, timeout=60)
    assert job["status"] in expected, job
    _wait(lambda: not _broker_holds(client, job_id), f"the ack of job {job_id}")
    assert _running_rows() == []
    if job["status"] == "dead":
        assert len(_dlq_entries(client, job_id)) == 1
        _wait(lambda: f"{job_id}] raised expected: JobDeadLettered" in worker_log.read_text(),
              "Celery's FAILURE for the dead job")
    shown = [job["last_error"] or "", job["outcome"] or "", worker_log.read_text(),
             *[a["error_message"] or "" for a in job["attempts"]]]
    assert not [s for s in shown if FAULT_SECRET in s or HEADER_SECRET in s]
    return job


def _start(configure: Any, start_worker: Any, upstream: FaultServer, spec: str,
           **overrides: Any) -> Path:
    extra = {k: v for k, v in overrides.items() if k.isupper()}
    entry = integration(upstream.url, retry=FAST_RETRY,
                        **{k: v for k, v in overrides.items() if not k.isupper()})
    env = configure([entry], **{ENV: spec}, **extra)
    return start_worker(env, concurrency=1, include=HOOK).log_path


# point, what the upstream answers, the integration's extras, the final statuses accepted
CASES = [
    ("gate", 200, {}, {"dead"}),
    ("send", 200, {}, {"dead"}),
    ("classify", 503, {}, {"dead"}),
    ("audit", 200, {}, {"dead"}),
    ("fallback", 503, {"fallbacks": [{"type": "degraded", "priority": 1}]}, {"dead"}),
    ("settle", 200, {}, {"dead"}),
    ("dlq_publish", 400, {}, {"dead"}),
    ("metrics", 200, {}, {"dead"}),
]


@pytest.mark.parametrize(("point", "answer", "extras", "expected"), CASES,
                         ids=[case[0] for case in CASES])
def test_a_collaborator_that_raises_dead_letters_the_job_as_unknown(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis,
        point: str, answer: int, extras: dict[str, Any], expected: set[str]) -> None:
    if answer >= 500:
        upstream.set_mode("5xx", status=answer)
    else:
        upstream.set_script([answer] * 5)
    log = _start(configure, start_worker, upstream, f"{point}:1:error", **extras)
    job_id = recovery.enqueue("shop", "GET", "/items", headers={"X-Team": HEADER_SECRET})
    job = assert_final(redis_client, job_id, log, expected)
    if point == "dlq_publish":  # refused once: back to the queue, run again, then parked
        assert job["last_status"] == 400 and len(upstream.requests()) == 2
        return
    assert job["last_error"].startswith("The job raised an unexpected error (RuntimeError: "), job
    assert "[REDACTED]" in job["last_error"]
    (envelope,) = _dlq_entries(redis_client, job_id)
    assert envelope["error_categories"] == ["unknown"]
    assert envelope["message"] == job["last_error"]


def test_an_infrastructure_error_requeues_the_job_which_then_succeeds(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    log = _start(configure, start_worker, upstream, "gate:1:redis")
    job_id = recovery.enqueue("shop", "GET", "/items")
    assert_final(redis_client, job_id, log, {"succeeded"})
    assert len(upstream.requests()) == 1
    assert '"action": "requeue"' in log.read_text() or "action=requeue" in log.read_text()


def test_an_infrastructure_error_that_persists_is_dead_lettered_after_the_poison_limit(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    log = _start(configure, start_worker, upstream, "gate:99:redis", POISON_MAX_DELIVERIES="2")
    job_id = recovery.enqueue("shop", "GET", "/items")
    job = assert_final(redis_client, job_id, log, {"dead"})
    assert job["last_error"].startswith("The infrastructure failed 3 times in a row "
                                        "(ConnectionError: injected at gate"), job
    assert upstream.requests() == []


def _publish_raw(job: JobSpec) -> None:
    """Straight into the broker, as a producer that skipped validation would."""
    app.send_task("tasks.integration.call", kwargs={"job": job.to_message()},
                  task_id=job.job_id, **task_reprs(job, Progress()))
    get_runtime().audit.job_queued(job.job_id, job.integration, job.method, job.path, {},
                                   job.idempotency_key)


def test_a_header_value_outside_latin1_dead_letters_the_job_without_showing_it(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    env = configure([integration(upstream.url, retry=FAST_RETRY)])
    log = start_worker(env, concurrency=1).log_path
    value = f"caf\u00e9-\u2603-{HEADER_SECRET}"
    job = JobSpec(job_id=new_job_id(), integration="shop", method="GET", path="/items",
                  headers={"X-Name": value}, idempotency_key=new_job_id(),
                  enqueued_at=utc_now_iso())
    _publish_raw(job)
    stored = assert_final(redis_client, job.job_id, log, {"dead"})
    # The send refuses the value before encoding it (without that check, http.client would
    # raise UnicodeEncodeError, which `describe` reduces to the encoding's name).
    assert stored["last_error"] == (
        "The job raised an unexpected error (UnsafeHeaderError: The value of header 'X-Name' "
        "contains characters outside visible ASCII ('[REDACTED]'); header values may hold only "
        "visible ASCII, spaces and tabs, so percent-encode or base64-encode other text.).")
    assert "\u2603" not in log.read_text() and upstream.requests() == []


def test_an_integration_removed_while_its_job_waits_dead_letters_the_job(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis) -> None:
    configure([integration(upstream.url)])
    job_id = recovery.enqueue("shop", "GET", "/items")
    env = configure([integration(upstream.url, id="other")])
    log = start_worker(env, concurrency=1).log_path
    job = assert_final(redis_client, job_id, log, {"dead"})
    assert job["last_error"] == (
        "The job raised an unexpected error (UnknownIntegrationError: Unknown integration "
        "'shop'. Known integrations: other.).")
    assert upstream.requests() == []
