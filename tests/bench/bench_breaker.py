"""Benchmarks of the cluster breaker against stock pybreaker (`CircuitRedisStorage`).

Run from the repository root (needs Redis on 127.0.0.1:6379; uses db 15 under its own prefix):

    .venv/bin/python tests/bench/bench_breaker.py

1. outage: worker processes (1, 4, 8) call an upstream through one shared breaker
   (threshold 5, reset 2 s); the upstream answers 503 for 20 s; how many calls reach it while
   it is down. "warm": the outage starts while the workers are busy with a healthy upstream;
   "cold": every worker starts at the same instant against the dead upstream. "ours" grows the
   open time after each failed probe (reset_backoff_factor 2, capped at 4 x reset = 8 s);
   "ours-fixed" keeps it at 2 s (reset_backoff_factor 1), as pybreaker does.
2. concurrency: 8 threads x 2 calls to an upstream that answers after 2 s, through one breaker;
   wall time against no breaker.
3. round trips: Redis commands added to one successful closed-state call (counted).

Prints a table and writes tests/bench/results/breaker.json. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pybreaker
import redis
import requests

from recovery.config.registry import BreakerConfig
from recovery.state.breaker import ClusterBreaker

REDIS_URL = "redis://127.0.0.1:6379/15"
RESULTS = Path(__file__).resolve().parent / "results" / "breaker.json"
THRESHOLD = 5
RESET_S = 2.0
HALF_OPEN_MAX_CALLS = 1
PAUSE_S = 0.01  # a worker's pause between jobs
WARM_S = 2.0  # healthy calls before the outage starts
SLOW_S = 2.0
OUTAGE_TARGET = THRESHOLD + 10 * HALF_OPEN_MAX_CALLS
CONFIG = BreakerConfig(enabled=True, threshold=THRESHOLD, reset_timeout_ms=int(RESET_S * 1000),
                       call_timeout_ms=10_000, half_open_max_calls=HALF_OPEN_MAX_CALLS)
FIXED_CONFIG = replace(CONFIG, reset_backoff_factor=1.0)
OUTAGE_KINDS = ("ours", "ours-fixed", "pybreaker")


class Upstream:
    """A local HTTP upstream: /api answers at once (200, or 503 while `down`), /slow answers
    200 after 2 s. `counts` counts requests by path and status."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.down = False
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = 503 if self.path == "/api" and upstream.down else 200
                name = f"{self.path} {status}"
                with upstream._lock:
                    upstream.counts[name] = upstream.counts.get(name, 0) + 1
                if self.path == "/slow":
                    time.sleep(SLOW_S)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def take(self, name: str) -> int:
        with self._lock:
            return self.counts.pop(name, 0)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def make_breaker(kind: str, client: redis.Redis, prefix: str) -> Any:
    """Either breaker, with the same threshold and reset time, sharing state through Redis."""
    if kind in ("ours", "ours-fixed"):
        config = CONFIG if kind == "ours" else FIXED_CONFIG
        return ClusterBreaker(client, "bench", config, key_prefix=prefix)
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client,
                                            namespace=f"{prefix}pyb")
    return pybreaker.CircuitBreaker(fail_max=THRESHOLD, reset_timeout=RESET_S,
                                    state_storage=storage)


def get_ok(session: requests.Session, url: str) -> None:
    session.get(url, timeout=10).raise_for_status()


# --- 1. outage ------------------------------------------------------------------------------


def outage_worker(kind: str, url: str, prefix: str, run_s: float, ready: Any, go: Any,
                  start_at: Any, results: Any) -> None:
    breaker = make_breaker(kind, redis.Redis.from_url(REDIS_URL), prefix)
    session = requests.Session()
    ready.put(os.getpid())
    go.wait()
    deadline = start_at.value + run_s
    tried = refused = 0
    while time.time() < deadline:
        tried += 1
        try:
            breaker.call(get_ok, session, url)
        except pybreaker.CircuitBreakerError:
            refused += 1
        except requests.RequestException:
            pass
        time.sleep(PAUSE_S)
    results.put((tried, refused))


def run_outage(kind: str, processes: int, upstream: Upstream, duration_s: float,
               warm_s: float) -> dict[str, Any]:
    """Workers call a healthy upstream for `warm_s`, then it answers 503 for `duration_s`.

    With `warm_s` 0 every worker starts at the same instant against the dead upstream: the
    worst case for calls already in flight when the breaker trips.
    """
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    start_at = context.Value("d", 0.0)
    prefix = f"bench:{uuid.uuid4().hex}:"
    workers = [
        context.Process(target=outage_worker, args=(kind, f"{upstream.url}/api", prefix,
                                                    warm_s + duration_s, ready, go, start_at,
                                                    results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    upstream.down = warm_s <= 0
    start_at.value = time.time()
    go.set()
    time.sleep(warm_s)
    upstream.down = True
    outcomes = [results.get(timeout=warm_s + duration_s + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    upstream.down = False
    reached = upstream.take("/api 503")
    upstream.take("/api 200")
    _cleanup(prefix)
    return {
        "breaker": kind, "processes": processes, "start": "cold" if warm_s <= 0 else "warm",
        "upstream_calls": reached, "attempts": sum(t for t, _ in outcomes),
        "refused": sum(r for _, r in outcomes), "target": OUTAGE_TARGET,
        "meets_target": reached <= OUTAGE_TARGET,
    }


# --- 2. concurrency -------------------------------------------------------------------------


def run_concurrency(kind: str, upstream: Upstream, threads: int = 8, calls: int = 2
                    ) -> dict[str, Any]:
    prefix = f"bench:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(REDIS_URL)
    breaker = None if kind == "none" else make_breaker(kind, client, prefix)
    url = f"{upstream.url}/slow"

    def work() -> None:
        session = requests.Session()
        for _ in range(calls):
            if breaker is None:
                get_ok(session, url)
            else:
                breaker.call(get_ok, session, url)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    _cleanup(prefix)
    return {"breaker": kind, "threads": threads, "calls_per_thread": calls,
            "seconds": round(elapsed, 2)}


# --- 3. round trips -------------------------------------------------------------------------


class CountingRedis(redis.Redis):
    """Counts the commands sent (each is one round trip: none of these are pipelined)."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


def run_round_trips(kind: str) -> dict[str, Any]:
    prefix = f"bench:{uuid.uuid4().hex}:"
    client = CountingRedis.from_url(REDIS_URL)
    client.sent = []
    breaker = make_breaker(kind, client, prefix)
    breaker.call(lambda: None)  # warm up: scripts loaded, keys created
    client.sent.clear()
    breaker.call(lambda: None)
    sent = list(client.sent)
    _cleanup(prefix)
    return {"breaker": kind, "round_trips": len(sent), "commands": sent}


# --- running and reporting ------------------------------------------------------------------


def _cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _machine() -> dict[str, Any]:
    info = redis.Redis.from_url(REDIS_URL).info("server")
    return {"cpus": os.cpu_count(), "load_average_1_5_15": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(), "redis": info.get("redis_version"),
            "pybreaker": getattr(pybreaker, "__version__", _dist_version("pybreaker")),
            "note": "2 shared cores; other jobs were running on the machine"}


def _breaker_config() -> dict[str, Any]:
    return {"threshold": THRESHOLD, "reset_timeout_ms": CONFIG.reset_timeout_ms,
            "half_open_max_calls": HALF_OPEN_MAX_CALLS,
            "ours": {"reset_backoff_factor": CONFIG.reset_backoff_factor,
                     "max_reset_timeout_ms": CONFIG.reset_cap_ms},
            "ours-fixed": {"reset_backoff_factor": FIXED_CONFIG.reset_backoff_factor,
                           "max_reset_timeout_ms": FIXED_CONFIG.reset_cap_ms}}


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True))
              for r in rows]
    return "\n".join(lines)


def _timed(label: str, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"... {label}", flush=True)
    return step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="outage length, seconds")
    parser.add_argument("--processes", default="1,4,8", help="comma-separated process counts")
    options = parser.parse_args()
    counts = [int(n) for n in options.processes.split(",")]
    machine_before = _machine()
    upstream = Upstream()
    try:
        outage = [
            _timed(f"outage {kind} x{n} ({'warm' if warm else 'cold'} start)",
                   lambda kind=kind, n=n, warm=warm: run_outage(
                       kind, n, upstream, options.duration, warm))
            for warm in (WARM_S, 0.0) for n in counts for kind in OUTAGE_KINDS
        ]
        concurrency = [_timed(f"concurrency {kind}", lambda kind=kind: run_concurrency(
            kind, upstream)) for kind in ("none", "ours", "pybreaker")]
    finally:
        upstream.stop()
    baseline = concurrency[0]["seconds"]
    for row in concurrency:
        row["ratio_to_no_breaker"] = round(row["seconds"] / baseline, 2)
    trips = [run_round_trips(kind) for kind in ("ours", "pybreaker")]
    report = {"command": "python tests/bench/bench_breaker.py "
                         f"--duration {options.duration:g} --processes {options.processes}",
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine_before,
              "load_average_at_end_1_5_15": os.getloadavg(),
              "breaker_config": _breaker_config(),
              "outage_s": options.duration, "outage": outage,
              "concurrency": concurrency, "round_trips": trips}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(_table(f"\n1. calls reaching a dead upstream over {options.duration:g} s "
                 f"(threshold {THRESHOLD}, reset {RESET_S:g} s, target <= {OUTAGE_TARGET})",
                 outage, ["breaker", "processes", "start", "upstream_calls", "attempts",
                          "refused", "meets_target"]))
    print(_table(f"\n2. 8 threads x 2 calls to a {SLOW_S:g} s upstream", concurrency,
                 ["breaker", "seconds", "ratio_to_no_breaker"]))
    print(_table("\n3. Redis round trips for one successful closed-state call", trips,
                 ["breaker", "round_trips", "commands"]))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
