"""Overhead when all is well: a plain Celery autoretry task against our full path.

Run from the repository root (Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432):

    .venv/bin/python -m tests.bench.bench_overhead                  # every run once, ~7 min
    .venv/bin/python -m tests.bench.bench_overhead --only plain,ours --repeat 3

Each run enqueues N GETs with no worker running, then starts a `celery worker -P prefork -c 2`
that drains them from the same Redis broker (db 15, a throw-away key prefix) while a fault
server process (mode ok) answers. Throughput is (N - 1) / (last - first upstream request time),
the same measure for every run; for our runs the audit trail's first attempt start to last job
finish is reported too. Runs:

    plain       tests/bench/plain_app.py: autoretry_for, retry_backoff, acks_late, requests.get
    ours        recovery.enqueue -> tasks.integration.call, production configuration
    ours-events ours with TASK_EVENTS=true (what a worker costs while Flower watches it)
    timing      ours, CPU time (thread_time) of every pipeline step (bench-only wrappers)
    profile     ours under cProfile in each pool process (profile written to results/)
    py-spy      ours, the stock worker sampled from outside by py-spy (`pip install -e
                '.[bench]'`): each step's share of the pool processes' busy samples
    no-audit, no-gates, no-metrics, lean: ours with that cost removed (ablations; lean is all
                three)

Writes tests/bench/results/overhead.json and overhead_profile.txt. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
import yaml

from tests.bench import pyspy

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "bench" / "results"
REDIS_URL = "redis://127.0.0.1:6379/15"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
RUNS = ("plain", "ours", "ours-events", "timing", "profile", "py-spy", "no-audit", "no-gates",
        "no-metrics", "lean")
ABLATIONS = {"no-metrics": (), "lean": ("no-audit", "no-gates")}
WORKER_FLAGS = ["-P", "prefork", "-c", "2", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-l", "info"]

# --- the bench-only harness, installed in the worker before it forks its pool ---------------

_spent: collections.Counter[str] = collections.Counter()
_tasks = [0, 0.0]  # tasks finished in this pool process, thread_time at the last prerun
_profile: list[cProfile.Profile] = []
BODY = "task body (prerun..postrun)"


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _spent[label] += time.thread_time() - started

    return wrapper


def _timed_context(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Times entering and leaving a context manager, not the block it wraps."""

    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[None]:
        started = time.thread_time()
        with fn(*args, **kwargs):
            _spent[label] += time.thread_time() - started
            yield
            started = time.thread_time()
        _spent[label] += time.thread_time() - started

    return wrapper


def _steps() -> list[tuple[Any, str, str]]:
    """(owner, attribute, label) of every step of a successful delivery."""
    import recovery.engine.events as events
    import recovery.engine.pipeline as pipeline
    import recovery.telemetry.metrics as metrics
    import tasks.integration as task
    from recovery.audit.spool import AuditBatcher
    from recovery.audit.writer import AuditWriter
    from recovery.engine.gate import Gate
    from recovery.state.tokens import TokenProvider

    audit = [(AuditWriter, name, f"audit {name}") for name in ("job_started", "attempt",
                                                                 "job_status")]
    return [*audit, (task, "run_job", "run_job (all steps)"),
            (Gate, "enter", "gate: claim, rate limit, breaker, budget (1 round trip)"),
            (Gate, "settle", "settle: breaker record, release (1 round trip)"),
            (AuditBatcher, "commit", "audit rows to the spool (1 XADD, at task end)"),
            (TokenProvider, "token_for", "oauth token"), (pipeline, "send", "http call"),
            (metrics, "observe_call", "metrics"), (pipeline, "response_body", "response body"),
            (pipeline, "remember", "cache fallback"), (events, "redact_params", "redaction"),
            (task, "job_context", "log context")]


def _disable(features: set[str]) -> None:
    """Remove whole costs (ablations): what throughput would be without them."""
    from recovery.audit.writer import AuditWriter
    from recovery.engine.gate import Gate
    from recovery.engine.gate_steps import Admission
    from recovery.state.breaker import Permit
    from recovery.state.idempotency import Claim, ClaimResult

    if "no-audit" in features:
        for name in ("job_started", "attempt", "job_status"):
            setattr(AuditWriter, name, lambda *_, **__: True)
    if "no-gates" in features:
        Gate.enter = lambda _self, integration, *_, **__: Admission(  # type: ignore[method-assign]
            ClaimResult(Claim.CLAIMED, 1), permit=Permit(integration.id, False, None))
        Gate.settle = lambda *_, **__: False  # type: ignore[method-assign]


def _install(features: set[str], out_dir: Path) -> None:
    from celery import signals

    _disable(features)
    if "timing" in features:
        for owner, name, label in _steps():
            wrap = _timed_context if name == "job_context" else _timed
            setattr(owner, name, wrap(label, getattr(owner, name)))

    def before_task(**_: Any) -> None:
        _tasks[1] = time.thread_time()

    def after_task(**_: Any) -> None:
        _spent[BODY] += time.thread_time() - _tasks[1]
        _tasks[0] += 1
        if _tasks[0] % 50 == 0:  # pool processes exit without a hook we could rely on
            _dump(out_dir)

    def start_profile(**_: Any) -> None:
        _profile.append(cProfile.Profile(time.thread_time))  # CPU, not waiting
        _profile[0].enable()

    signals.task_prerun.connect(before_task, weak=False)
    signals.task_postrun.connect(after_task, weak=False)
    if "profile" in features:
        signals.worker_process_init.connect(start_profile, weak=False)


def _dump(out_dir: Path) -> None:
    if _profile:
        _profile[0].dump_stats(out_dir / f"{os.getpid()}.prof")  # stops the profiler
        _profile[0].enable()
    data = {"_tasks": _tasks[0], **_spent, **_thread_cpu_s()}
    (out_dir / f"{os.getpid()}.json").write_text(json.dumps(data))


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this pool process and of each of its background threads so far."""
    times = os.times()
    spent = {"pool process, all threads": times.user + times.system}
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.native_id is None:
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
            spent[f"thread {thread.name}"] = ticks / os.sysconf("SC_CLK_TCK")
    return spent


def harness_main(argv: list[str]) -> None:
    """`-m tests.bench.bench_overhead --harness FEATURES DIR -- worker args`: a patched worker."""
    features, out_dir = set(argv[0].split(",")) - {""}, Path(argv[1])
    _install(features, out_dir)
    from recovery.celery_app import app

    app.worker_main(["worker", *argv[3:]])


# --- orchestration --------------------------------------------------------------------------


class Worker:
    def __init__(self, env: dict[str, str], command: list[str], log_path: Path) -> None:
        self._log = log_path.open("wb")
        self.log_path = log_path
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while b"ready." not in log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"The worker did not start; see {log_path}.")
            time.sleep(0.1)
        self.cpu_at_ready = self.cpu_s()
        self.main_cpu_at_ready = process_cpu_s([self.process.pid])

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the worker and its pool processes."""
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                                  text=True, check=False).stdout.split()
        return process_cpu_s([self.process.pid, *map(int, children)])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 15)
        self.process.wait(timeout=120)
        self._log.close()


def process_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes (gone ones count 0)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu_s(upstream_pid: int) -> dict[str, float]:
    """CPU seconds so far of the services every run shares, and of the whole machine."""
    def pids(pattern: str) -> list[int]:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                               check=False).stdout.split()
        return [int(pid) for pid in found]

    busy = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    idle = int(busy[3]) + int(busy[4])
    ticks = os.sysconf("SC_CLK_TCK")
    return {"redis": process_cpu_s(pids("redis-server")),
            "postgres": process_cpu_s(pids("postgres")),
            "upstream": process_cpu_s([upstream_pid]),
            "machine": (sum(int(v) for v in busy[:7]) - idle) / ticks,
            "stolen": int(busy[7]) / ticks}  # taken by the hypervisor for other guests


class Bench:
    def __init__(self, n: int, work: Path, *, stock_upstream: bool = False) -> None:
        self.n, self.work = n, work
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}:"
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.db_name = f"t_bench_{uuid.uuid4().hex[:12]}"
        server = "recovery.demo.faultserver" if stock_upstream else "tests.bench.bench_overhead"
        self.upstream = subprocess.Popen(
            [sys.executable, "-m", server, *([] if stock_upstream else ["--upstream"]),
             "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        assert self.upstream.stdout is not None
        self.url = self.upstream.stdout.readline().split()[-1]
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.database_url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{self.db_name}"
        integrations = work / "integrations.yaml"
        integrations.write_text(yaml.safe_dump({"integrations": [{
            "id": "bench", "base_url": self.url, "timeout_ms": 10_000,
            "retry": {"max_attempts": 3, "initial_delay_ms": 1000, "backoff_factor": 2,
                      "max_delay_ms": 30_000, "jitter": 0.2},
            "circuit_breaker": {"threshold": 5, "reset_timeout_ms": 30_000},
            "fallbacks": [], "rate_limit": {"window_ms": 1000, "max_requests": 100_000}}]}))
        os.environ.update({  # this process enqueues, so it needs the settings too
            "REDIS_URL": REDIS_URL, "RECOVERY_REDIS_PREFIX": self.prefix, "LOG_LEVEL": "info",
            "DATABASE_URL": self.database_url, "RECOVERY_INTEGRATIONS": str(integrations),
            "BENCH_REDIS_URL": REDIS_URL, "BENCH_PREFIX": self.prefix, "PYTHONPATH": str(REPO)})
        os.environ.pop("SENTRY_DSN", None)
        self.env = dict(os.environ)
        from recovery.audit.db import upgrade

        upgrade(self.database_url)

    def close(self) -> None:
        self.upstream.terminate()
        self.upstream.wait(timeout=10)
        keys = list(self.redis.scan_iter(match=f"{self.prefix}*", count=1000))
        if keys:
            self.redis.delete(*keys)
        from recovery.engine.runtime import reset_runtime

        reset_runtime()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def run(self, name: str, round_no: int) -> dict[str, Any]:
        requests.post(f"{self.url}/_reset", timeout=10).raise_for_status()
        load_before = os.getloadavg()[0]
        enqueue_s, queue = self._enqueue(name)
        out_dir = self.work / f"{name}-{round_no}"
        out_dir.mkdir()
        env = dict(self.env)
        if name in ("no-metrics", "lean"):
            env["METRICS_ENABLED"] = "false"
        env["TASK_EVENTS"] = "true" if name == "ours-events" else "false"
        features = ",".join(ABLATIONS.get(name, (name,)))
        if name in ("plain", "ours", "ours-events", "py-spy"):
            app = "tests.bench.plain_app" if name == "plain" else "recovery.celery_app"
            command = [sys.executable, "-m", "celery", "-A", app, "worker", *WORKER_FLAGS,
                       "-n", f"{name}-{self.prefix}@%h"]
            command += ["-Q", queue] if name == "plain" else []
        else:
            command = [sys.executable, "-m", "tests.bench.bench_overhead", "--harness",
                       features, str(out_dir), "--", *WORKER_FLAGS, "-n", f"ours-{name}@%h"]
        worker = Worker(env, command, out_dir / "worker.log")
        shared_at_ready = machine_cpu_s(self.upstream.pid)
        sampled = out_dir / "py-spy.txt"
        try:
            with (pyspy.sampling(worker.process.pid, sampled) if name == "py-spy"
                  else contextlib.nullcontext()):
                self._wait_drained(queue)
            cpu_ms = (worker.cpu_s() - worker.cpu_at_ready) / self.n * 1000
            main_s = process_cpu_s([worker.process.pid]) - worker.main_cpu_at_ready
            main_ms = main_s / self.n * 1000
            shared = machine_cpu_s(self.upstream.pid)
        finally:
            worker.stop()
        result = self._result(name, enqueue_s, load_before, out_dir)
        others = {f"{key}_cpu_ms_per_job": round((shared[key] - shared_at_ready[key])
                                                 / self.n * 1000, 2) for key in shared}
        if sampled.exists():
            result["py_spy_shares_of_pool_samples"] = pyspy.shares(sampled)
            (RESULTS / "overhead_pyspy.txt").write_text("".join(
                f"{share:7.2%}  {frame}\n" for frame, share in pyspy.hottest(sampled)))
        return {**result, "worker_cpu_ms_per_job": round(cpu_ms, 2),
                "worker_main_process_cpu_ms_per_job": round(main_ms, 2), **others}

    def _enqueue(self, name: str) -> tuple[float, str]:
        started = time.perf_counter()
        if name == "plain":
            from tests.bench.plain_app import QUEUE, TASK_NAME, app

            for i in range(self.n):
                app.send_task(TASK_NAME, args=[f"{self.url}/plain/{i}"])
            return time.perf_counter() - started, QUEUE
        import recovery

        for i in range(self.n):
            recovery.enqueue("bench", "GET", f"/ours/{i}")
        return time.perf_counter() - started, "integrations"

    def _wait_drained(self, queue: str, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            served = requests.get(f"{self.url}/_stats", timeout=10).json()["requests"]
            busy = self.redis.llen(f"{self.prefix}{queue}") + self.redis.hlen(
                f"{self.prefix}unacked")
            if served >= self.n and busy == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"The worker did not drain {self.n} jobs in {timeout_s} s.")

    def _result(self, name: str, enqueue_s: float, load: float, out_dir: Path) -> dict[str, Any]:
        records = requests.get(f"{self.url}/_requests", timeout=30).json()
        times = sorted(r["time"] for r in records)
        statuses = collections.Counter(r["status"] for r in records)
        result: dict[str, Any] = {
            "run": name, "n": self.n, "upstream_requests": len(records),
            "upstream_statuses": {str(k): v for k, v in statuses.items()},
            "tasks_per_s": round((len(times) - 1) / (times[-1] - times[0]), 1),
            "enqueue_per_s": round(self.n / enqueue_s, 1), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}
        if name != "plain":
            result.update(self._audit_rate())
        steps = _merge_steps(out_dir)
        if len(steps) > 1:
            result["steps_ms_per_job"] = steps
        profiles = [str(path) for path in out_dir.glob("*.prof")]
        if profiles:
            out = io.StringIO()
            stats = pstats.Stats(*profiles, stream=out)
            stats.dump_stats(RESULTS / "overhead_profile.prof")
            stats.strip_dirs()
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(30)
            (RESULTS / "overhead_profile.txt").write_text(out.getvalue())
        return result

    def _audit_rate(self) -> dict[str, Any]:
        sql = ("SELECT count(*) FILTER (WHERE status = 'succeeded'), extract(epoch FROM "
               "max(finished_at) - (SELECT min(started_at) FROM attempts)) FROM jobs")
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(sql).fetchone()
            conn.execute("TRUNCATE attempts, jobs CASCADE")
        assert row is not None
        done, span = row
        rate = round((done - 1) / float(span), 1) if done and span else None
        return {"audit_succeeded": done, "audit_tasks_per_s": rate}


def _merge_steps(out_dir: Path) -> dict[str, float]:
    """Milliseconds per task of every timed step, over the tasks the pool processes reported."""
    total: collections.Counter[str] = collections.Counter()
    for path in out_dir.glob("*.json"):
        total.update(json.loads(path.read_text()))
    tasks = total.pop("_tasks", 0)
    return {label: round(s * 1000 / tasks, 3) for label, s in total.most_common()} if tasks else {}


def upstream_main(argv: list[str]) -> None:
    """The fault server with Nagle's algorithm off (TCP_NODELAY), in its own process.

    The stock handler writes the headers and the body in two small writes; on a kept-alive
    connection the second waits for the client's delayed ACK, about 40 ms per request, which
    would hide everything else a pooled client does.
    """
    from recovery.demo import fault_http, faultserver

    fault_http.FaultHandler.disable_nagle_algorithm = True
    faultserver.main(argv)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--harness", "--upstream"):
        (harness_main if sys.argv[1] == "--harness" else upstream_main)(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="jobs per run (default 3000)")
    parser.add_argument("--only", default=",".join(RUNS), help=f"runs, from {','.join(RUNS)}")
    parser.add_argument("--stock-upstream", action="store_true",
                        help="the fault server as shipped (Nagle on; ~40 ms per pooled request)")
    parser.add_argument("--out", default="overhead.json", help="results file in results/")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every run (median)")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        parser.error(f"Unknown runs {unknown}; choose from {', '.join(RUNS)}.")
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        bench = Bench(args.n, Path(tmp), stock_upstream=args.stock_upstream)
        try:
            runs = []
            for round_no in range(args.repeat):
                for name in names:
                    runs.append({**bench.run(name, round_no), "round": round_no})
                    print(json.dumps(runs[-1]), flush=True)
        finally:
            bench.close()
    upstream = "stock fault server" if args.stock_upstream else "fault server, TCP_NODELAY"
    report = {"machine": _machine(), "upstream": upstream, "runs": runs}
    report["summary"] = _summary(runs)
    (RESULTS / args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per run name: median tasks/s and worker CPU per job over the rounds, the ratio of the
    median to plain's median, and each round's ratio to that round's plain run."""
    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["run"] for r in runs):
        rates = [r["tasks_per_s"] for r in runs if r["run"] == name]
        cpu = [r["worker_cpu_ms_per_job"] for r in runs if r["run"] == name]
        summary[name] = {"tasks_per_s": statistics.median(rates), "samples": rates,
                         "worker_cpu_ms_per_job": statistics.median(cpu)}
    base = summary.get("plain", {}).get("tasks_per_s")
    plain_by_round = {r["round"]: r["tasks_per_s"] for r in runs if r["run"] == "plain"}
    for name, entry in summary.items():
        entry["ratio_to_plain"] = round(entry["tasks_per_s"] / base, 3) if base else None
        ratios = [round(r["tasks_per_s"] / plain_by_round[r["round"]], 3) for r in runs
                  if r["run"] == name and r["round"] in plain_by_round]
        if ratios and name != "plain":  # the same round's plain run: drifts hit both alike
            entry["round_ratios"] = ratios
            entry["median_round_ratio"] = statistics.median(ratios)
    return summary


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg": os.getloadavg(),
            "at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


if __name__ == "__main__":
    main()
