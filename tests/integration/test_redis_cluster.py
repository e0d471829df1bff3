"""The gate's scripts on a real 3-node Redis Cluster that this module starts on loopback ports.

Each integration's keys carry the hash tag `{integration}`, so the combined EVALSHA before a
call (idempotency claim, rate limit, breaker permit, retry budget) and the one after it
(breaker record, claim release) each touch one slot, on the node that owns it.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

import recovery
from recovery.audit.spool import RedisSpool
from recovery.audit.sql import Op
from recovery.config.broker import push_dead_letter
from recovery.config.registry import Integration
from recovery.config.settings import load_settings
from recovery.demo.faultserver import FaultServer
from recovery.dlq.store import QueueList
from recovery.engine.gate import Gate
from recovery.engine.runtime import get_runtime
from recovery.ops.health import FailureStreak
from recovery.state.beatlock import BeatLock
from recovery.state.breaker import ClusterBreaker
from recovery.state.budget import RetryBudget
from recovery.state.connection import integration_tag, is_cluster, redis_client
from recovery.state.idempotency import Claim, IdempotencyStore
from recovery.state.ratelimit import ClusterRateLimiter
from recovery.state.scripts import ScriptCache, ScriptCall
from recovery.telemetry.metrics import RedisStore
from tests.integration.conftest import reconfigure_celery_app, wait_for_status
from tests.integration.test_gate import make_integration
from tests.integration.test_job_flow import integration as integration_entry

NODES = 3
FINAL = {"succeeded", "duplicate", "failed", "dead", "degraded"}


def _free_port_pair() -> int:
    """A port that is free together with its cluster bus port (port + 10000)."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if all(_free(candidate) for candidate in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1 for a Redis Cluster node")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_node(port: int, directory: Path) -> subprocess.Popen[bytes]:
    directory.mkdir()
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", str(directory / "nodes.conf"), "--dir", str(directory),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh Redis Cluster of three primaries, shut down (data discarded) afterwards."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed to start a Redis Cluster")
    root = tmp_path_factory.mktemp("cluster")
    ports = [_free_port_pair() for _ in range(NODES)]
    nodes = [_start_node(port, root / str(port)) for port in ports]
    try:
        for port in ports:
            _wait(lambda port=port: redis.Redis(port=port).ping(), f"node {port} answers")
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{port}" for port in ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        for port in ports:
            _wait(lambda port=port: b"cluster_state:ok" in redis.Redis(port=port).execute_command(
                "CLUSTER", "INFO"), f"node {port} reports cluster_state:ok")
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=20)


class Rig:
    """The gate and its components on the cluster, under a key prefix of the test's own;
    every EVALSHA the cluster ran is recorded with its keys."""

    def __init__(self, url: str) -> None:
        self.client = redis_client(url)
        self.prefix = f"t{uuid.uuid4().hex[:8]}:"
        self.calls: list[list[str]] = []
        original = self.client.evalsha

        def recording(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            reply = original(sha, numkeys, *keys_and_args)  # a NOSCRIPT refusal is not a run
            self.calls.append([str(key) for key in keys_and_args[:numkeys]])
            return reply

        self.client.evalsha = recording  # type: ignore[method-assign]
        self.idempotency = IdempotencyStore(self.client, key_prefix=self.prefix)
        self.limiter = ClusterRateLimiter(self.client, key_prefix=self.prefix)
        self.budget = RetryBudget(self.client, key_prefix=self.prefix)
        self.breakers: dict[str, ClusterBreaker] = {}
        self.gate = Gate(self.client, self.idempotency, self.limiter, self.budget, self.breaker)

    def breaker(self, integration: Integration) -> ClusterBreaker:
        if integration.id not in self.breakers:
            self.breakers[integration.id] = ClusterBreaker(
                self.client, integration.id, integration.circuit_breaker,
                key_prefix=self.prefix)
        return self.breakers[integration.id]

    def slot(self, key: str) -> int:
        return int(self.cluster.keyslot(key))

    @property
    def cluster(self) -> RedisCluster:
        assert isinstance(self.client, RedisCluster)
        return self.client

    def node_of(self, integration_id: str) -> str:
        key = f"{self.prefix}breaker:{integration_tag(self.client, integration_id)}"
        return str(self.cluster.get_node_from_key(key).name)

    def stored_keys(self) -> list[str]:
        found = self.cluster.keys(f"{self.prefix}*", target_nodes=RedisCluster.ALL_NODES)
        return sorted(key.decode() for key in found)

    def close(self) -> None:
        keys = self.stored_keys()
        for key in keys:
            self.client.delete(key)
        self.gate.close()
        self.cluster.close()


@pytest.fixture
def rig(cluster_url: str) -> Iterator[Rig]:
    made = Rig(cluster_url)
    yield made
    made.close()


def two_integrations_on_two_nodes(rig: Rig) -> tuple[Integration, Integration]:
    """`shop` and the first other id whose slot another node owns."""
    shop = make_integration()
    for n in range(100):
        other = make_integration()
        other = Integration(**{**other.__dict__, "id": f"crm-{n}"})
        if rig.node_of(other.id) != rig.node_of(shop.id):
            return shop, other
    raise AssertionError("every id landed on one node")


def test_the_url_names_a_cluster_and_every_key_of_an_integration_shares_its_slot(
        rig: Rig) -> None:
    assert is_cluster(rig.client)
    shop = make_integration()
    calls = [rig.idempotency.claim_call("shop", "k1", "job-1", 10_000, "job-1:0:1:0"),
             rig.idempotency.release_call("shop", "k1", "job-1", "job-1", succeeded=True),
             rig.limiter.acquire_call("shop", shop.rate_limit),
             rig.budget.note_call("shop", shop.retry_budget)]
    keys = [key for call in calls if call is not None for key in call.keys]
    keys.append(rig.breaker(shop).key)
    assert all("{shop}" in key for key in keys), keys
    assert {rig.slot(key) for key in keys} == {rig.slot("{shop}")}


def test_the_gate_runs_one_script_per_side_of_a_call_on_the_integrations_node(
        rig: Rig) -> None:
    for integration in two_integrations_on_two_nodes(rig):
        rig.calls.clear()
        passage = rig.gate.enter(integration, "order-1", "job-1", 10_000, "job-1:0:1:0",
                                 first_attempt=True, budget_pending=False, max_deliveries=3)
        assert passage.claim.claim is Claim.CLAIMED and passage.block is None
        assert passage.permit is not None
        spool = ScriptCall("return 1", [f"{rig.prefix}audit:spool"], [])
        assert rig.gate.settle(integration, passage.permit, "order-1", "job-1", "job-1",
                               success=True, counts=True, audit=spool) is False, (
            "the audit spool lives in another slot: it must not ride along on a cluster")
        again = rig.gate.enter(integration, "order-1", "job-2", 10_000, "job-2:0:1:0",
                               first_attempt=True, budget_pending=False, max_deliveries=3)
        assert again.claim.claim is Claim.SUCCEEDED
        # enter (claim 4 keys, rate limit 2, breaker 1, budget 2), settle (breaker 1, claim
        # release 2), enter again: one EVALSHA each
        assert [len(keys) for keys in rig.calls] == [9, 3, 9], rig.calls
        tag = integration_tag(rig.client, integration.id)
        for keys in rig.calls:
            assert {rig.slot(key) for key in keys} == {rig.slot(tag)}
        assert rig.limiter.usage(integration.id, integration.rate_limit)["used"] == 1
        assert rig.breaker(integration).snapshot().state == "closed"
    assert all("{shop}" in key or "{crm-" in key for key in rig.stored_keys()), rig.stored_keys()


def test_refusals_come_from_the_cluster_as_from_one_redis(rig: Rig) -> None:
    shop = make_integration(max_requests=1)
    first = rig.gate.enter(shop, "a", "job-a", 10_000, "job-a:0:1:0", first_attempt=True,
                           budget_pending=False, max_deliveries=3)
    assert first.block is None and first.permit is not None
    full = rig.gate.enter(shop, "b", "job-b", 10_000, "job-b:0:1:0", first_attempt=True,
                          budget_pending=False, max_deliveries=3)
    assert full.block is not None and full.block.source == "rate-limit"
    other = make_integration()
    other = Integration(**{**other.__dict__, "id": "billing"})
    rig.breaker(other).force_open("test")
    refused = rig.gate.enter(other, "c", "job-c", 10_000, "job-c:0:1:0", first_attempt=True,
                             budget_pending=False, max_deliveries=3)
    assert refused.block is not None and refused.block.source == "breaker"


def test_a_script_over_two_slots_is_refused_never_split(rig: Rig) -> None:
    cache = ScriptCache(rig.client)
    keys = [f"{rig.prefix}breaker:{{shop}}", f"{rig.prefix}breaker:{{crm}}"]
    assert rig.slot(keys[0]) != rig.slot(keys[1])
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        cache.run("two-slots", lambda: "return 1", keys, [])


def test_the_dead_letter_queue_lives_on_the_cluster_too(rig: Rig) -> None:
    settings = load_settings({"RECOVERY_REDIS_PREFIX": rig.prefix})
    for n in range(3):
        push_dead_letter(rig.client, settings, "dlq", {"job_id": f"dead-{n}"})
    queue = QueueList(rig.client, rig.prefix)
    assert len(queue) == 3
    oldest = next(iter(queue.entries()))
    assert oldest.data == {"job_id": "dead-0"}
    assert queue.remove(oldest.raw)
    assert [entry.data["job_id"] for entry in queue.entries()] == ["dead-1", "dead-2"]


def test_the_audit_spool_appends_and_drains_on_the_cluster(rig: Rig) -> None:
    spool = RedisSpool(rig.client, rig.prefix, max_entries=1000)
    assert {rig.slot(spool.key), rig.slot(spool.alarm_key), rig.slot(spool.lock_key)} == {
        rig.slot("{spool}")}
    ops = [Op("job_status", f"job-{n}", n, {"status": "succeeded"}) for n in range(3)]
    spool.append(ops)
    assert spool.length() == 1
    written: list[Op] = []

    def write(batch: list[Op]) -> list[Op]:
        written.extend(batch)
        return []

    drained = spool.drain(write)
    assert drained.error is None
    assert [(op.job_id, op.values["status"]) for op in written] == [
        (f"job-{n}", "succeeded") for n in range(3)]
    assert spool.length() == 0


def test_a_worker_runs_jobs_with_its_state_on_the_cluster(
        broker: str, cluster_url: str, configure, upstream: FaultServer, start_worker,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path on a Cluster state store: claim, gate, breaker, audit spool, dead letter;
    the broker is RabbitMQ or (a Cluster cannot be Celery's broker) the test Redis."""
    test_redis = os.environ["REDIS_URL"]
    if broker == "redis":
        monkeypatch.setenv("BROKER_URL", test_redis)
    env = configure([integration_entry(upstream.url, retry={
        "max_attempts": 2, "initial_delay_ms": 100, "backoff_factor": 2, "max_delay_ms": 1000,
        "jitter": 0})], REDIS_URL=cluster_url)
    reconfigure_celery_app()
    rt = get_runtime()
    try:
        _run_jobs_on_the_cluster(rt, upstream, start_worker, env)
    finally:
        cluster = rt.redis
        assert isinstance(cluster, RedisCluster)
        for name in cluster.keys(f"{rt.settings.redis_key_prefix}*",
                                 target_nodes=RedisCluster.ALL_NODES):
            cluster.delete(name)
        monkeypatch.setenv("REDIS_URL", test_redis)  # before the broker fixture reconfigures
        reconfigure_celery_app()


def _run_jobs_on_the_cluster(rt: Any, upstream: FaultServer, start_worker: Any,
                             env: dict[str, str]) -> None:
    assert is_cluster(rt.redis)
    start_worker(env, concurrency=2)
    key = f"o-{uuid.uuid4().hex[:8]}"
    done = recovery.enqueue("shop", "POST", "/orders", json={"n": 1}, idempotency_key=key)
    assert wait_for_status(rt.engine, done, FINAL)["status"] == "succeeded"
    again = recovery.enqueue("shop", "POST", "/orders", json={"n": 1}, idempotency_key=key)
    assert wait_for_status(rt.engine, again, FINAL)["status"] == "duplicate"
    upstream.set_mode("5xx", status=503)
    dead = recovery.enqueue("shop", "GET", "/down")
    assert wait_for_status(rt.engine, dead, FINAL)["status"] == "dead"
    assert [entry.job_id for entry in QueueList(rt.redis, rt.settings.redis_key_prefix)
            .entries()] == [dead]
    assert upstream.successes_by_key() == {key: 1}
    assert rt.redis.exists(f"{rt.settings.redis_key_prefix}idem:{{shop}}:{key}:ok")


def test_the_beat_lock_health_streaks_and_metrics_work_on_the_cluster(rig: Rig) -> None:
    first = BeatLock(rig.client, f"{rig.prefix}beat:lock", ttl_s=30)
    second = BeatLock(rig.client, f"{rig.prefix}beat:lock", ttl_s=30)
    assert first.acquire() and not second.acquire()
    owner, left = second.holder()
    assert owner == first.token and left is not None and 0 < left <= 30
    assert first.release() and second.acquire()
    streak = FailureStreak(rig.client, rig.prefix)
    assert [streak.failed("shop", 60) for _ in range(3)] == [1, 2, 3]
    store = RedisStore(rig.client, rig.prefix)
    store.add([("api_calls_total", "shop|/orders|GET|200", 1.0),
               ("health_checks_total", "shop|true", 2.0)])  # two keys, two slots: one pipeline
    assert store.read("api_calls_total") == {"shop|/orders|GET|200": 1.0}
    assert store.read("health_checks_total") == {"shop|true": 2.0}
