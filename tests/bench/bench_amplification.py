"""Retry amplification and recovery: 500 jobs against an upstream that is down for 30 s.

Run from the repository root (needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432;
uses Redis db 15 under a throw-away key prefix and a throw-away database per run):

    .venv/bin/python tests/bench/bench_amplification.py                 # plain, ours
    .venv/bin/python tests/bench/bench_amplification.py --variants ours,ours-no-breaker

Each variant runs in its own child process with real `celery worker` processes (2 workers x 2
prefork processes). The upstream (`recovery.demo.faultserver.FaultServer`) answers 503 from the
moment
the jobs are enqueued; after `--outage` seconds it answers 200 again. Variants:

    plain            tests/bench/plain_tasks.py: autoretry_for, retry_backoff, max_retries=3
    ours             the full path: rate-limit gate, breaker, budget (when wired), audit, DLQ
    ours-no-budget   ours with `retry_budget: {enabled: false}` (needs the budget wiring)
    ours-no-breaker  ours with the breaker disabled: what the retry budget alone does

Reported per variant: upstream calls per job while it was down (plain autoretry: up to 4), the
time from recovery to the breaker closing (from the audit trail) and to the last job finishing,
and how the jobs ended. Results go to tests/bench/results/amplification.json (merged by
variant and budget). Workers run from the checkout this file is in, so a scratch copy with
other code (run with PYTHONPATH pointing at it) measures that code. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
import yaml

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "amplification.json"
REDIS_URL = "redis://127.0.0.1:6379/15"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
INTEGRATION = "amp"
WORKERS, PROCESSES = 2, 2
VARIANTS = ("plain", "ours", "ours-no-budget", "ours-no-breaker")
TERMINAL = {"succeeded", "degraded", "dead", "failed", "duplicate"}


class Worker:
    """A real `celery worker` subprocess in its own session, stopped with SIGTERM."""

    def __init__(self, app: str, env: dict[str, str], log_path: Path, queues: str | None) -> None:
        command = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", "prefork",
                   "-c", str(PROCESSES), "--without-gossip", "--without-mingle",
                   "--without-heartbeat", "-l", "info", "-n", f"amp-{uuid.uuid4().hex[:8]}@%h"]
        if queues:
            command += ["-Q", queues]
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"ready." in self.log_path.read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"A worker did not start:\n{self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


def start_workers(app: str, env: dict[str, str], logs: Path, queues: str | None = None
                  ) -> list[Worker]:
    workers = [Worker(app, env, logs / f"worker{n}.log", queues) for n in range(WORKERS)]
    for worker in workers:
        worker.wait_ready()
    return workers


def wait_until(done: Callable[[], bool], timeout: float, workers: list[Worker]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.25)
    for worker in workers:
        print(worker.tail(), file=sys.stderr)
    return False


def upstream_calls(records: list[dict[str, Any]], recovered_at: float, jobs: int
                   ) -> dict[str, Any]:
    """Calls the upstream received while down (before `recovered_at`) and afterwards."""
    down = [r for r in records if r["time"] < recovered_at and r["path"].startswith("/orders/")]
    after = [r for r in records if r["time"] >= recovered_at and r["path"].startswith("/orders/")]
    per_job = Counter(r["path"] for r in down)
    return {
        "calls_while_down": len(down),
        "calls_per_job_while_down": round(len(down) / jobs, 3),
        "max_calls_one_job_while_down": max(per_job.values(), default=0),
        "calls_after_recovery": len(after),
        "calls_per_job_total": round((len(down) + len(after)) / jobs, 3),
    }


# --- plain Celery -----------------------------------------------------------------------------


def run_plain(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    from recovery.demo.faultserver import FaultServer

    prefix = f"bench-amp-{uuid.uuid4().hex[:12]}:"
    os.environ.update(BENCH_REDIS_URL=REDIS_URL, BENCH_PREFIX=prefix)
    from tests.bench import plain_tasks

    client = redis.Redis.from_url(REDIS_URL)
    upstream = FaultServer(mode="5xx", status=503).start()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = start_workers("tests.bench.plain_tasks", env, logs, plain_tasks.QUEUE)
    try:
        started = time.time()
        for n in range(args.jobs):
            plain_tasks.app.send_task(plain_tasks.TASK_NAME, args=[f"{upstream.url}/orders/{n}"])
        recovered_at = _recover_after(upstream, started, args.outage)

        def finished() -> int:
            return sum(int(client.get(f"{prefix}plain:{k}") or 0) for k in ("succeeded", "failed"))

        drained = wait_until(lambda: finished() >= args.jobs, args.timeout, workers)
        times = [float(t) for t in client.lrange(f"{prefix}plain:finished", 0, -1)]
        outcomes = {k: int(client.get(f"{prefix}plain:{k}") or 0) for k in ("succeeded", "failed")}
    finally:
        for worker in workers:
            worker.stop()
        upstream.stop()
        _delete_prefix(client, prefix)
    return {
        **upstream_calls(upstream.requests(), recovered_at, args.jobs),
        "enqueue_s": None, "breaker_closed_after_recovery_s": None,
        "drained": drained,
        "drained_after_recovery_s": _after(max(times, default=recovered_at), recovered_at),
        "outcomes": outcomes,
    }


# --- ours -------------------------------------------------------------------------------------


def integration_entry(url: str, variant: str) -> dict[str, Any]:
    """The same retry schedule as the plain task: 4 attempts in all, 1 s doubling, jittered."""
    entry: dict[str, Any] = {
        "id": INTEGRATION,
        "base_url": url,
        "timeout_ms": 5000,
        "retry": {"max_attempts": 4, "initial_delay_ms": 1000, "backoff_factor": 2,
                  "max_delay_ms": 30_000, "jitter": 0.5},
        "circuit_breaker": {"enabled": variant != "ours-no-breaker", "threshold": 5,
                            "reset_timeout_ms": 5000},
        "fallbacks": [],
        "rate_limit": {"window_ms": 1000, "max_requests": 100_000},
    }
    if variant == "ours-no-budget":
        entry["retry_budget"] = {"enabled": False}
    return entry


def budget_wired() -> bool:
    from recovery.core.message import Progress

    return "budget_pending" in Progress.__dataclass_fields__


def prepare_ours(args: argparse.Namespace, logs: Path, url: str) -> tuple[str, str]:
    """A database and environment for one run; returns (database name, key prefix)."""
    from recovery.audit.db import upgrade

    name = f"bench_amp_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(database_url)
    path = logs / "integrations.yaml"
    path.write_text(yaml.safe_dump({"integrations": [integration_entry(url, args.variant)]}))
    prefix = f"bench-amp-{uuid.uuid4().hex[:12]}:"
    os.environ.update(REDIS_URL=REDIS_URL, RECOVERY_REDIS_PREFIX=prefix,
                      DATABASE_URL=database_url, RECOVERY_INTEGRATIONS=str(path),
                      LOG_LEVEL="warning", PYTHONPATH=str(REPO))
    if args.max_defer_ms:
        os.environ["MAX_DEFER_WINDOW"] = str(args.max_defer_ms)
    for name_ in ("SENTRY_DSN", "ALERT_WEBHOOK_URL"):
        os.environ.pop(name_, None)
    return name, prefix


def job_outcomes(engine: Any) -> tuple[dict[str, int], datetime | None]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
        last = conn.execute(text("SELECT max(finished_at) FROM jobs")).scalar()
    return {str(status): int(count) for status, count in rows}, last


def breaker_closed_at(engine: Any, recovered_at: float) -> float | None:
    from recovery.audit.queries import list_transitions

    closes = [_epoch(t["at"]) for t in list_transitions(engine, INTEGRATION, limit=1000)
              if t["to_state"] == "closed"]
    return min((at for at in closes if at >= recovered_at), default=None)


def _epoch(value: datetime | str) -> float:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def run_ours(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    from recovery.demo.faultserver import FaultServer

    upstream = FaultServer(mode="5xx", status=503).start()
    database, prefix = prepare_ours(args, logs, upstream.url)
    import recovery
    from recovery.engine.runtime import get_runtime

    client = redis.Redis.from_url(REDIS_URL)
    workers = start_workers("recovery.celery_app", dict(os.environ), logs)
    try:
        engine = get_runtime().engine
        started = time.time()
        for n in range(args.jobs):
            recovery.enqueue(INTEGRATION, "GET", f"/orders/{n}")
        enqueue_s = time.time() - started
        recovered_at = _recover_after(upstream, started, args.outage)

        def done() -> bool:
            counts, _ = job_outcomes(engine)
            return sum(counts.get(s, 0) for s in TERMINAL) >= args.jobs

        drained = wait_until(done, args.timeout, workers)
        outcomes, last = job_outcomes(engine)
        closed = breaker_closed_at(engine, recovered_at)
        engine.dispose()
    finally:
        for worker in workers:
            worker.stop()
        upstream.stop()
        _delete_prefix(client, prefix)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return {
        **upstream_calls(upstream.requests(), recovered_at, args.jobs),
        "enqueue_s": round(enqueue_s, 2),
        "breaker_closed_after_recovery_s": None if closed is None else _after(closed,
                                                                              recovered_at),
        "drained": drained,
        "drained_after_recovery_s": _after(_epoch(last) if last else recovered_at,
                                           recovered_at),
        "outcomes": outcomes,
    }


# --- shared -----------------------------------------------------------------------------------


def _recover_after(upstream: Any, started: float, outage_s: float) -> float:
    time.sleep(max(0.0, started + outage_s - time.time()))
    upstream.set_mode("ok")
    return time.time()


def _after(moment: float, recovered_at: float) -> float:
    return round(moment - recovered_at, 2)


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = set(client.scan_iter(match=f"{prefix}*", count=1000))
    keys |= set(client.scan_iter(match=f"*{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One variant, in this (child) process; prints its result as one JSON line."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-amp-") as scratch:
        logs = Path(scratch)
        result = run_plain(args, logs) if args.variant == "plain" else run_ours(args, logs)
    budget = args.variant not in ("plain", "ours-no-budget") and budget_wired()
    return {
        "variant": args.variant, "budget": budget, "jobs": args.jobs, "outage_s": args.outage,
        "max_defer_ms": args.max_defer_ms or 600_000,
        "workers": f"{WORKERS} x {PROCESSES} prefork", **result,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save(results: list[dict[str, Any]], path: Path) -> None:
    existing: list[dict[str, Any]] = []
    if path.exists():
        existing = json.loads(path.read_text()).get("runs", [])
    keys = {(r["variant"], r["budget"]) for r in results}
    merged = [r for r in existing if (r["variant"], r["budget"]) not in keys] + results
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "runs": merged,
    }, indent=2) + "\n")


def show(result: dict[str, Any]) -> None:
    label = f"{result['variant']}{' +budget' if result['budget'] else ''}"
    print(f"{label:24} calls/job down {result['calls_per_job_while_down']:>6}  "
          f"(max {result['max_calls_one_job_while_down']})  breaker closed +"
          f"{result['breaker_closed_after_recovery_s']} s  drained +"
          f"{result['drained_after_recovery_s']} s  {result['outcomes']}  "
          f"load {result['load_average_before'][0]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="plain,ours")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the upstream is down")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for drain")
    parser.add_argument("--max-defer-ms", type=int, default=0,
                        help="MAX_DEFER_WINDOW for our workers (default: the setting's 600000)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file to merge into")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child process
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    results = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        command = [sys.executable, __file__, "--variant", variant, "--jobs", str(args.jobs),
                   "--outage", str(args.outage), "--timeout", str(args.timeout),
                   "--max-defer-ms", str(args.max_defer_ms)]
        child = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
        lines = [ln for ln in child.stdout.splitlines() if ln.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            sys.exit(f"The {variant} run failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
        show(results[-1])
        save(results[-1:], args.results)


if __name__ == "__main__":
    main()
