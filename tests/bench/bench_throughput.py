"""Throughput of the README's worker against plain Celery (issue 13), each comparison in one run.

Run from the repository root (PostgreSQL on 127.0.0.1:5432; the benchmark starts its own
`redis-server` on a free loopback port, so `INFO commandstats` counts only its own commands):

    .venv/bin/python -m tests.bench.bench_throughput                 # everything, ~6 minutes
    .venv/bin/python -m tests.bench.bench_throughput --only slow100 --rounds 1
    .venv/bin/python -m tests.bench.bench_throughput --only slow100 --rounds 1 --broker rabbitmq

`--broker rabbitmq` puts both sides' queues on RabbitMQ (127.0.0.1:5672, guest/guest, a
virtual host of the run's own, created and deleted with rabbitmqctl; quorum queues and
publisher confirms on both sides, as `recovery.config.broker` sets ours); the state stays in
the benchmark's Redis, whose counts then leave the broker's commands out.

Comparisons (plain and ours interleaved, plain first, `--rounds` times, so drifts in the
machine's load hit both):

    slow100  3000 jobs, upstream answers after 100 ms. Queue filled first, then drained by ours
             (`celery -A recovery.celery_app worker -Q integrations`, the README's command: 64
             threads) or plain Celery (`-P threads -c 64`, a task doing `requests.get`).
    slow1s   the same with a 1 s upstream at concurrency 256 on both sides (WORKER_CONCURRENCY
             for ours); both against the bound concurrency / latency = 256 jobs/s.
    fast     end to end on a fast upstream: the worker is up, this process enqueues 3000 jobs
             and the worker drains them meanwhile, timed from the first enqueue to the last
             upstream hit. Plain is the strong baseline: a pooled `requests.Session`, Celery's
             default prefetch (4), the same 64 threads. Then each producer alone (no worker):
             enqueues per second and CPU per enqueue (`recovery.enqueue` vs `apply_async`).
    scaling  1, 2 and 4 of our worker processes (default pool) on the 100 ms upstream: jobs/s,
             Redis commands and Redis CPU per job (`INFO commandstats`, `INFO cpu`), producer
             and workers apart, and what that makes at 10,000 jobs/s.
    profile  (not in the default set) one slow100 drain of ours under py-spy `--gil`: what
             the thread holding the GIL runs, the bound of a one-process thread pool.

Drain rate = (jobs - 1) / (last - first upstream request time). Writes
tests/bench/results/throughput.json. Not collected by pytest; never asserts a time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
import yaml

from tests.bench.bench_overhead import ADMIN_DSN, REPO, RESULTS, Worker, _machine

COMPARISONS = ("slow100", "slow1s", "fast", "scaling", "profile")
LISTEN = ["--without-gossip", "--without-mingle", "--without-heartbeat"]


class Services:
    """A private Redis, a fresh audit database, the fault server, and the settings for both
    sides; `close` removes them."""

    def __init__(self, work: Path, broker: str = "redis") -> None:
        self.work = work
        self.broker = broker
        self.vhost: str | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.redis_server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.redis = redis.Redis.from_url(self.redis_url)
        _wait(lambda: _pings(self.redis), "the benchmark's redis-server", 10)
        self.upstream = subprocess.Popen(
            [sys.executable, "-m", "recovery.demo.faultserver", "--port", "0"], cwd=REPO,
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.upstream.stdout is not None
        self.url = self.upstream.stdout.readline().split()[-1]
        self.db_name = f"t_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.database_url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{self.db_name}"
        self.prefix = "bench:"
        integrations = work / "integrations.yaml"
        integrations.write_text(yaml.safe_dump({"integrations": [{
            "id": "bench", "base_url": self.url, "timeout_ms": 10_000, "fallbacks": [],
            "retry": {"max_attempts": 3, "initial_delay_ms": 1000, "max_delay_ms": 30_000},
            "rate_limit": {"window_ms": 1000, "max_requests": 1_000_000}}]}))
        os.environ.update({  # this process enqueues for both sides
            "REDIS_URL": self.redis_url, "RECOVERY_REDIS_PREFIX": self.prefix,
            "DATABASE_URL": self.database_url, "RECOVERY_INTEGRATIONS": str(integrations),
            "LOG_LEVEL": "info", "BENCH_REDIS_URL": self.redis_url, "BENCH_PREFIX": self.prefix,
            "BENCH_PLAIN_PREFETCH": "4", "PYTHONPATH": str(REPO)})
        os.environ.pop("SENTRY_DSN", None)
        os.environ.pop("BROKER_URL", None)
        os.environ.pop("BENCH_BROKER_URL", None)
        if broker == "rabbitmq":
            self.vhost = f"bench-{uuid.uuid4().hex[:12]}"
            _rabbitmqctl("add_vhost", self.vhost)
            _rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
            amqp = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"
            os.environ.update({"BROKER_URL": amqp, "BENCH_BROKER_URL": amqp})
        _reconfigure_celery_app()
        from recovery.audit.db import upgrade

        upgrade(self.database_url)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **extra}

    def upstream_mode(self, delay_ms: int | None) -> None:
        requests.post(f"{self.url}/_reset", timeout=10).raise_for_status()
        if delay_ms:
            requests.post(f"{self.url}/_control", json={"mode": "slow", "delay_ms": delay_ms},
                          timeout=10).raise_for_status()

    def hits(self) -> list[float]:
        records = requests.get(f"{self.url}/_requests", timeout=30).json()
        return sorted(r["time"] for r in records if r["path"] != "/health")

    def redis_counts(self) -> tuple[int, float]:
        """(commands served so far, Redis CPU seconds so far), the INFO calls excluded."""
        stats = self.redis.info("commandstats")
        cpu = self.redis.info("cpu")
        calls = sum(int(v["calls"]) for v in stats.values())
        return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def backlog(self, queue: str) -> int:
        if self.vhost is not None:  # ready + unacknowledged messages in the run's vhost
            out = subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "-p", self.vhost, "--no-table-headers",
                 "name", "messages"], check=True, capture_output=True, text=True, timeout=60)
            return sum(int(fields[1]) for fields in map(str.split, out.stdout.splitlines())
                       if len(fields) == 2 and fields[0] == queue)
        return int(self.redis.llen(f"{self.prefix}{queue}")) + int(
            self.redis.hlen(f"{self.prefix}unacked"))

    def audit_done(self, n: int) -> dict[str, Any]:
        """Wait until the audit trail has every job succeeded (the spool drains about once a
        second), then empty it for the next run."""
        sql = "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM jobs"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            def done() -> Any:
                row = conn.execute(sql).fetchone()
                return row if row is not None and row[0] >= n else None
            found = _wait(done, "every job's audit row", 120, raising=False)
            attempts = conn.execute("SELECT count(*) FROM attempts").fetchone()
            conn.execute("TRUNCATE attempts, jobs CASCADE")
        return {"audit_succeeded": None if found is None else found[0],
                "audit_attempts": None if attempts is None else attempts[0]}

    def flush_redis(self) -> None:
        self.redis.flushdb()
        from recovery.engine.runtime import reset_runtime

        reset_runtime()

    def close(self) -> None:
        for process in (self.upstream, self.redis_server):
            process.terminate()
            process.wait(timeout=10)
        from recovery.engine.runtime import reset_runtime

        reset_runtime()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        if self.vhost is not None:
            _rabbitmqctl("delete_vhost", self.vhost)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _reconfigure_celery_app() -> None:
    """Point this process's Celery app (built at import) at the broker the environment names
    now, as the integration tests' `broker` fixture does."""
    from kombu import pools

    from recovery.celery_app import app, celery_config
    from recovery.config.settings import load_settings, reset_settings

    reset_settings()
    pools.reset()
    app.conf.update(celery_config(load_settings()))
    app._pool = None
    app.__dict__.pop("amqp", None)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _wait(check: Callable[[], Any], what: str, timeout_s: float, *, raising: bool = True) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    if raising:
        raise RuntimeError(f"Timed out after {timeout_s} s waiting for {what}.")
    return None


# --- one run ---------------------------------------------------------------------------------

def worker_command(side: str, concurrency: int, name: str) -> tuple[list[str], str]:
    """(argv, queue): ours is the README's command; plain runs the same pool size."""
    celery = [sys.executable, "-m", "celery", "-A"]
    if side == "ours":
        return [*celery, "recovery.celery_app", "worker", "-Q", "integrations", "-l", "info",
                *LISTEN, "-n", f"{name}@%h"], "integrations"
    return [*celery, "tests.bench.plain_app", "worker", "-P", "threads", "-c", str(concurrency),
            "-Q", "plain", "-l", "info", *LISTEN, "-n", f"{name}@%h"], "plain"


def enqueue(side: str, svc: Services, n: int, start: int = 0) -> tuple[float, float]:
    """Enqueue n jobs from this process: (wall seconds, CPU seconds of this process)."""
    if side == "ours":
        import recovery
        from recovery.engine.producer_runtime import get_producer_runtime

        get_producer_runtime()

        def send(i: int) -> Any:
            return recovery.enqueue("bench", "GET", f"/ours/{i}")
    else:
        from tests.bench import plain_app

        task = plain_app.session_get if side == "plain-session" else plain_app.get

        def send(i: int) -> Any:
            return task.apply_async((f"{svc.url}/plain/{i}",))
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(start, start + n):
        send(i)
    return time.perf_counter() - wall, time.process_time() - cpu


def drain_run(svc: Services, side: str, n: int, *, delay_ms: int | None, concurrency: int,
              processes: int = 1, prefilled: bool = True,
              profile: Path | None = None) -> dict[str, Any]:
    """Fill the queue (or not), start the worker(s), wait until every job was served."""
    svc.flush_redis()
    svc.upstream_mode(delay_ms)
    load_before = os.getloadavg()[0]
    queue = "integrations" if side == "ours" else "plain"
    counts = [svc.redis_counts()]
    enqueue_s = enqueue(side, svc, n) if prefilled else None
    counts.append(svc.redis_counts())
    extra = {} if concurrency == 64 else {"WORKER_CONCURRENCY": str(concurrency)}
    workers = []
    try:
        for number in range(processes):
            name = f"{side}{number}-{uuid.uuid4().hex[:6]}"
            argv, queue = worker_command(side, concurrency, name)
            workers.append(Worker(svc.env(**extra), argv, svc.work / f"{side}-{number}.log"))
        started = time.time()  # the fault server stamps its hits with the same clock
        if not prefilled:
            enqueue_s = enqueue(side, svc, n)
        with gil_sampling(workers[0].process.pid, profile):
            _wait(lambda: len(svc.hits()) >= n and svc.backlog(queue) == 0, "the drain", 600)
        cpu_s = sum(w.cpu_s() - w.cpu_at_ready for w in workers)
    finally:
        for worker in workers:
            worker.stop()
    counts.append(svc.redis_counts())
    hits = svc.hits()
    result: dict[str, Any] = {
        "side": side, "n": n, "concurrency": concurrency, "processes": processes,
        "upstream_delay_ms": delay_ms or 0, "upstream_requests": len(hits),
        "drain_jobs_per_s": round((len(hits) - 1) / (hits[-1] - hits[0]), 1),
        "worker_cpu_ms_per_job": round(cpu_s / n * 1000, 2),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "redis_commands_per_job": {
            "producer": round((counts[1][0] - counts[0][0]) / n, 2),
            "workers": round((counts[2][0] - counts[1][0]) / n, 2)},
        "redis_cpu_ms_per_job": {
            "producer": round((counts[1][1] - counts[0][1]) / n * 1000, 3),
            "workers": round((counts[2][1] - counts[1][1]) / n * 1000, 3)}}
    assert enqueue_s is not None
    result["enqueue_per_s"] = round(n / enqueue_s[0], 1)
    result["enqueue_cpu_ms_per_job"] = round(enqueue_s[1] / n * 1000, 3)
    if not prefilled:
        result["end_to_end_jobs_per_s"] = round(n / (hits[-1] - started), 1)
    if side == "ours":
        result.update(svc.audit_done(n))
    return result


def producer_only(svc: Services, side: str, n: int) -> dict[str, Any]:
    """The producer alone (no worker running): enqueues per second and CPU per enqueue.
    `ours-quiet` is ours with TASK_SENT_EVENTS=false (no task-sent event per enqueue)."""
    from recovery.celery_base import app

    default = app.conf.task_send_sent_event
    app.conf.task_send_sent_event = default and side != "ours-quiet"
    side = "ours" if side == "ours-quiet" else side
    svc.flush_redis()
    try:
        enqueue(side, svc, 50, start=10**6)  # warm: connections, scripts, imports
        load_before = os.getloadavg()[0]
        wall, cpu = enqueue(side, svc, n)
    finally:
        app.conf.task_send_sent_event = default
    result = {"side": side, "n": n, "enqueue_per_s": round(n / wall, 1),
              "enqueue_cpu_ms_per_job": round(cpu / n * 1000, 3),
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    svc.flush_redis()
    return result


@contextlib.contextmanager
def gil_sampling(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy samples of whichever thread holds the GIL (`--gil`): what a thread pool that is
    bound by one process's GIL spends it on. Nothing when `out` is None."""
    if out is None:
        yield
        return
    exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                       f"{os.environ.get('PATH', '')}")
    if exe is None:
        raise RuntimeError("py-spy is not installed; run `pip install -e '.[bench]'` first.")
    recorder = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "200", "--gil",
                                 "--format", "raw", "--output", str(out), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)


def gil_shares(raw: Path, count: int = 30) -> dict[str, Any]:
    """Inclusive shares of the GIL samples by function (ours and the libraries'), and the
    innermost frames."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        frames, samples = stack.split(";"), int(number)
        total += samples
        leaves[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    share = {frame: round(n / total, 3) for frame, n in inclusive.most_common(count)}
    return {"samples": total, "inclusive": share,
            "leaves": {frame: round(n / total, 3) for frame, n in leaves.most_common(count)}}


# --- the comparisons -------------------------------------------------------------------------

def interleaved(rounds: int, run: Callable[[str], dict[str, Any]],
                sides: tuple[str, str]) -> list[dict[str, Any]]:
    runs = []
    for round_no in range(rounds):
        for side in sides:
            runs.append({**run(side), "round": round_no})
            print(json.dumps(runs[-1]), flush=True)
    return runs


def compare(svc: Services, name: str, n: int, rounds: int) -> dict[str, Any]:
    if name == "slow100":
        runs = interleaved(rounds, lambda side: drain_run(
            svc, side, n, delay_ms=100, concurrency=64), ("plain", "ours"))
        return {"runs": runs, **ratios(runs, "drain_jobs_per_s")}
    if name == "slow1s":
        runs = interleaved(rounds, lambda side: drain_run(
            svc, side, n, delay_ms=1000, concurrency=256), ("plain", "ours"))
        bound = 256 / 1.0
        return {"runs": runs, "bound_jobs_per_s": bound, **ratios(runs, "drain_jobs_per_s"),
                "share_of_bound": {side: [round(r["drain_jobs_per_s"] / bound, 3)
                                          for r in runs if r["side"] == side]
                                   for side in ("plain", "ours")}}
    if name == "fast":
        runs = interleaved(rounds, lambda side: drain_run(
            svc, side, n, delay_ms=None, concurrency=64, prefilled=False),
            ("plain-session", "ours"))
        sides = ("plain-session", "ours", "ours-quiet")
        producers = interleaved(rounds, lambda side: {
            **producer_only(svc, side, n), "variant": side}, sides)
        cpu = {side: [p["enqueue_cpu_ms_per_job"] for p in producers if p["variant"] == side]
               for side in sides}
        return {"runs": runs, **ratios(runs, "end_to_end_jobs_per_s"),
                "producer_only": producers, "producer_cpu_ratio": {
                    side: [round(o / p, 2) for p, o in zip(cpu[sides[0]], cpu[side], strict=True)]
                    for side in sides[1:]}}
    if name == "profile":
        raw = RESULTS / "throughput_pyspy.txt"
        run = drain_run(svc, "ours", n, delay_ms=100, concurrency=64, profile=raw)
        return {"runs": [run], "gil": gil_shares(raw)}
    runs = [drain_run(svc, "ours", n, delay_ms=100, concurrency=64, processes=k)
            for k in (1, 2, 4)]
    for run in runs:
        print(json.dumps(run), flush=True)
    return {"runs": runs, "at_10000_jobs_per_s": projection(runs)}


def ratios(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Ours / plain per round (each round's own plain run: drifts hit both alike)."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})["ours" if run["side"] == "ours" else "plain"] = (
            run[key])
    per_round = [round(r["ours"] / r["plain"], 3) for r in by_round.values()]
    return {"metric": key, "ours_over_plain": per_round}


def projection(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Redis load at 10,000 jobs/s from the measured commands and CPU per job (median run)."""
    commands = sorted(sum(r["redis_commands_per_job"].values()) for r in runs)[len(runs) // 2]
    cpu_ms = sorted(sum(r["redis_cpu_ms_per_job"].values()) for r in runs)[len(runs) // 2]
    return {"redis_commands_per_job": commands, "redis_commands_per_s": round(commands * 10_000),
            "redis_cpu_ms_per_job": cpu_ms, "redis_cores": round(cpu_ms * 10_000 / 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="jobs per run (default 3000)")
    parser.add_argument("--only", default=",".join(COMPARISONS[:-1]),
                        help=f"comparisons, from {','.join(COMPARISONS)}")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--out", default="throughput.json", help="results file in results/")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis",
                        help="both sides' broker (default redis; rabbitmq: 127.0.0.1:5672)")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    unknown = sorted(set(names) - set(COMPARISONS))
    if unknown:
        parser.error(f"Unknown comparisons {unknown}; choose from {', '.join(COMPARISONS)}.")
    RESULTS.mkdir(exist_ok=True)
    report: dict[str, Any] = {"machine": _machine(), "broker": args.broker,
                              "started": time.strftime("%H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        svc = Services(Path(tmp), args.broker)
        try:
            for name in names:
                report[name] = compare(svc, name, args.n, args.rounds)
                summary = {k: v for k, v in report[name].items() if k != "runs"}
                print(name, json.dumps(summary), flush=True)
        finally:
            svc.close()
    report["finished"] = time.strftime("%H:%M:%S")
    report["loadavg_at_end"] = os.getloadavg()
    (RESULTS / args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
