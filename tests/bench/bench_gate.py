"""Micro benchmark of the gate on the hot path: `Gate.enter` then `Gate.settle` per delivery.

Run from the repository root (needs Redis on 127.0.0.1:6379; uses db 15 under its own prefix):

    .venv/bin/python -m tests.bench.bench_gate [-n 3000] [--rounds 5] [--out gate.json]

Each round admits and settles `n` deliveries of distinct keys through the combined path (one
round trip each way, the breaker and retry budget on), then the same through the components
one by one (the path without a shared Redis for the gate). Reported per delivery: the median
over rounds of the wall time and of this process's CPU time for enter and for settle, in
microseconds. The CPU time is the gate's own cost; the wall time adds Redis and the loopback
network, so it moves with whatever else the machine runs. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path

import redis

from recovery.config.registry import BreakerConfig, Integration, RateLimitConfig, RetryConfig
from recovery.engine.gate import Gate
from recovery.state.breaker import ClusterBreaker
from recovery.state.budget import RetryBudget
from recovery.state.idempotency import IdempotencyStore
from recovery.state.ratelimit import ClusterRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/15"
RESULTS = Path(__file__).resolve().parent / "results"

SHOP = Integration(
    id="shop", name="Shop", base_url="http://127.0.0.1:9/v1", timeout_ms=2000,
    retry=RetryConfig(max_attempts=3, initial_delay_ms=100, backoff_factor=2,
                      max_delay_ms=1000, jitter=0.0),
    circuit_breaker=BreakerConfig(enabled=True, threshold=5, reset_timeout_ms=60_000,
                                  call_timeout_ms=2000),
    fallbacks=(), health_check=None,
    rate_limit=RateLimitConfig(window_ms=1000, max_requests=1_000_000),
    headers={}, oauth=None)


def make_gate(client: redis.Redis, prefix: str, *, combined: bool) -> Gate:
    breaker = ClusterBreaker(client, SHOP.id, SHOP.circuit_breaker, key_prefix=prefix)
    return Gate(client if combined else None, IdempotencyStore(client, key_prefix=prefix),
                ClusterRateLimiter(client, key_prefix=prefix),
                RetryBudget(client, key_prefix=prefix), lambda _integration: breaker)


def one_round(client: redis.Redis, n: int, *, combined: bool) -> dict[str, float]:
    """Admit and settle `n` deliveries; microseconds per delivery, wall and CPU, each step."""
    prefix = f"bench:gate:{uuid.uuid4().hex[:8]}:"
    gate = make_gate(client, prefix, combined=combined)
    spent = {"enter_wall": 0.0, "enter_cpu": 0.0, "settle_wall": 0.0, "settle_cpu": 0.0}
    try:
        for i in range(3):  # load the scripts and open the connections
            admitted = gate.enter(SHOP, f"warm{i}", f"w{i}", 10_000, f"w{i}:0:1:0",
                                  first_attempt=True, budget_pending=False, max_deliveries=3)
            gate.settle(SHOP, admitted.permit, f"warm{i}", f"w{i}", f"w{i}", success=True,
                        counts=True)
        for i in range(n):
            wall, cpu = time.perf_counter(), time.process_time()
            admitted = gate.enter(SHOP, f"k{i}", f"job-{i}", 10_000, f"job-{i}:0:1:0",
                                  first_attempt=True, budget_pending=False, max_deliveries=3)
            wall2, cpu2 = time.perf_counter(), time.process_time()
            assert admitted.permit is not None and admitted.block is None, admitted
            gate.settle(SHOP, admitted.permit, f"k{i}", f"job-{i}", f"job-{i}", success=True,
                        counts=True)
            wall3, cpu3 = time.perf_counter(), time.process_time()
            spent["enter_wall"] += wall2 - wall
            spent["enter_cpu"] += cpu2 - cpu
            spent["settle_wall"] += wall3 - wall2
            spent["settle_cpu"] += cpu3 - cpu2
    finally:
        gate.close()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    return {name: round(total / n * 1e6, 1) for name, total in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="deliveries per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per path (default 5)")
    parser.add_argument("--out", default="gate.json", help="results file in results/")
    options = parser.parse_args()
    client = redis.Redis.from_url(REDIS_URL)
    rounds: dict[str, list[dict[str, float]]] = {"combined": [], "one_by_one": []}
    for _ in range(options.rounds):  # interleaved, so a busy moment hits both paths
        for path in rounds:
            rounds[path].append(one_round(client, options.n, combined=path == "combined"))
    medians = {path: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
               for path, runs in rounds.items()}
    print(f"{'path':<12}{'enter wall':>12}{'enter cpu':>11}{'settle wall':>13}{'settle cpu':>12}"
          "   (us per delivery, median of rounds)")
    for path, m in medians.items():
        print(f"{path:<12}{m['enter_wall']:>12}{m['enter_cpu']:>11}{m['settle_wall']:>13}"
              f"{m['settle_cpu']:>12}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / options.out).write_text(json.dumps({
        "n": options.n, "rounds": rounds, "medians": medians, "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
