"""Issue 13: the README's worker (a thread pool, 64 threads) under a flaky upstream.

One real worker with `-P threads -c 64` drains 600 jobs while the local upstream answers a
seeded random mix of 200, 503 and connection resets. Afterwards, counted against what the
upstream itself recorded:

* every call is audited exactly once (attempt rows = upstream hits, per job and in order);
* no log line written inside a job carries another job's id (urllib3's request lines name the
  path, hence the job; Celery's own lines name the task id, which is the job id);
* the breaker's window counts equal the upstream's calls and failures.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import text

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from tests.integration.test_worker_log_format import log_lines_after_banner, parse_all

JOBS = 600
THREADS = 64
SCRIPT_LENGTH = 1200  # random answers for the first calls, then the upstream is healthy
FINAL = ("succeeded", "dead")
PATH = re.compile(r"/stress/(\d+)")


def flaky_integration(url: str) -> dict[str, Any]:
    """Retries fast, and a breaker that counts every call but never opens: its counts must
    then equal the upstream's, call for call."""
    return {
        "id": "shop", "base_url": url, "timeout_ms": 5000, "fallbacks": [],
        "retry": {"max_attempts": 6, "initial_delay_ms": 50, "backoff_factor": 2,
                  "max_delay_ms": 400, "jitter": 0.2},
        "circuit_breaker": {"threshold": 1_000_000, "reset_timeout_ms": 1000,
                            "failure_rate": 1.0, "window_ms": 600_000,
                            "minimum_calls": 1_000_000},
        "rate_limit": {"window_ms": 1000, "max_requests": 1_000_000},
        "retry_budget": {"enabled": False},
    }


def flaky_script(seed: int = 13) -> list[int | str]:
    choices: list[int | str] = [200] * 7 + [503] * 2 + ["reset"]
    pick = random.Random(seed)
    return [pick.choice(choices) for _ in range(SCRIPT_LENGTH)]


def wait_until(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {what}.")
        time.sleep(0.5)


def api_calls(upstream: FaultServer) -> list[dict[str, Any]]:
    return [r for r in upstream.requests() if PATH.search(r["path"])]


def attempt_rows(job_ids: list[str]) -> list[dict[str, Any]]:
    with get_runtime().engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT job_id, number, http_status FROM attempts WHERE kind = 'call' "
            "AND job_id = ANY(:ids) ORDER BY job_id, number"), {"ids": job_ids})
        return [dict(row._mapping) for row in rows]


def final_statuses(job_ids: list[str]) -> dict[str, str]:
    with get_runtime().engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status FROM jobs WHERE id = ANY(:ids)"),
                            {"ids": job_ids})
        return {row.id: row.status for row in rows if row.status in FINAL}


def upstream_by_job(calls: list[dict[str, Any]], job_ids: list[str]) -> dict[str, list[Any]]:
    """Each job's upstream answers in the order they were given (None for a reset)."""
    answers: dict[str, list[Any]] = defaultdict(list)
    for record in sorted(calls, key=lambda r: r["n"]):
        number = int(PATH.search(record["path"]).group(1))  # type: ignore[union-attr]
        status = record["status"]
        answers[job_ids[number]].append(None if status == "reset" else status)
    return answers


def leaked_lines(events: list[dict[str, Any]], job_ids: list[str]) -> tuple[int, list[str]]:
    """(lines checked, lines that name a job other than the one in their `job_id`)."""
    known = set(job_ids)
    checked, leaks = 0, []
    for event in events:
        if "job_id" not in event:
            continue
        message = json.dumps(event.get("event", ""))
        named = {job_ids[int(n)] for n in PATH.findall(message)}
        named |= {word for word in re.findall(r"[0-9a-f-]{32,36}", message) if word in known}
        if named:
            checked += 1
            if named != {event["job_id"]}:
                leaks.append(f"{event['job_id']}: {message[:200]}")
    return checked, leaks


def test_a_64_thread_worker_audits_logs_and_counts_every_call_exactly_once(
        configure, upstream: FaultServer, start_worker) -> None:
    env = configure([flaky_integration(upstream.url)], LOG_LEVEL="info")
    upstream.set_script(flaky_script())
    worker = start_worker(env, concurrency=THREADS, loglevel="debug")
    assert worker.pool == "threads"
    job_ids = [recovery.enqueue("shop", "GET", f"/stress/{n}") for n in range(JOBS)]

    wait_until(lambda: len(final_statuses(job_ids)) == JOBS, f"all {JOBS} jobs to end", 240)
    calls = wait_until(lambda: [c for c in api_calls(upstream) if c["status"] is not None]
                       if all(c["status"] is not None for c in api_calls(upstream)) else None,
                       "the upstream to answer every call", 30)
    rows = wait_until(lambda: (found if len(found := attempt_rows(job_ids)) >= len(calls)
                               else None), "an attempt row for every call", 60)

    # Audited exactly once: per job, attempts 1..k match the upstream's k answers in order.
    assert len(rows) == len(calls) > JOBS  # some calls failed, so there were retries
    seen = Counter((row["job_id"], row["number"]) for row in rows)
    assert max(seen.values()) == 1
    audited: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        audited[row["job_id"]].append(row["http_status"])
    answers = upstream_by_job(calls, job_ids)
    assert audited == answers
    assert {number for job in job_ids for number in range(1, len(answers[job]) + 1)} == {
        row["number"] for row in rows}

    # The breaker counted every call and every failure once.
    failures = sum(1 for call in calls if call["status"] != 200)
    assert failures > 0
    shop = get_runtime().registry.get("shop")
    snapshot = get_runtime().breaker(shop).snapshot()
    assert (snapshot.window_calls, snapshot.window_failures) == (len(calls), failures)
    assert snapshot.state == "closed"

    # No job's lines carry another job's id.
    wait_until(lambda: worker.log_path.read_text(errors="replace").count("succeeded in")
               >= len([s for s in final_statuses(job_ids).values() if s == "succeeded"]),
               "Celery's success line of every job", 30)
    events = parse_all(log_lines_after_banner(Path(worker.log_path)))
    checked, leaks = leaked_lines(events, job_ids)
    assert not leaks, f"{len(leaks)} lines show another job's id, e.g. {leaks[:3]}"
    answered = sum(1 for call in calls if call["status"] != "reset")  # urllib3 logs these
    assert checked >= answered, "too few job lines were checked to prove anything"
