"""A `redis+sentinel://` state store against a real Sentinel on loopback: the client reaches the
master the Sentinel names, and the gate's combined scripts run through it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recovery.config.registry import Integration
from recovery.config.settings import load_settings
from recovery.engine.gate import Gate
from recovery.state.breaker import ClusterBreaker
from recovery.state.budget import RetryBudget
from recovery.state.connection import is_cluster, redis_client
from recovery.state.idempotency import Claim, IdempotencyStore
from recovery.state.ratelimit import ClusterRateLimiter
from tests.integration.test_gate import make_integration
from tests.integration.test_redis_cluster import _free_port_pair, _wait


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A master and one Sentinel watching it (quorum 1), stopped afterwards."""
    root: Path = tmp_path_factory.mktemp("sentinel")
    master_port, sentinel_port = _free_port_pair(), _free_port_pair()
    config = root / "sentinel.conf"  # Sentinel rewrites its file: it must be writable
    config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {root}\n"
                      f"sentinel monitor main 127.0.0.1 {master_port} 1\n")
    processes = [
        subprocess.Popen(["redis-server", "--port", str(master_port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", str(root)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["redis-server", str(config), "--sentinel"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        _wait(lambda: redis.Redis(port=master_port).ping(), "the master answers")
        _wait(lambda: redis.Redis(port=sentinel_port).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main") is not None,
            "the Sentinel names the master")
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/main/3"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)


def test_settings_accept_the_url_and_the_client_reaches_the_named_master(
        sentinel_url: str) -> None:
    settings = load_settings({"REDIS_URL": sentinel_url, "BROKER_URL": "amqp://g:g@h:5672//"})
    client = redis_client(settings.redis_url)
    assert not is_cluster(client)
    name = f"t{uuid.uuid4().hex}"
    client.set(name, b"1", ex=60)
    port = int(client.connection_pool.get_master_address()[1])  # type: ignore[attr-defined]
    assert redis.Redis(port=port, db=3).get(name) == b"1"  # database 3, as the URL says
    client.close()


def test_the_gate_runs_its_combined_scripts_through_the_sentinel_master(
        sentinel_url: str) -> None:
    client = redis_client(sentinel_url)
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    breakers: dict[str, ClusterBreaker] = {}

    def breaker(integration: Integration) -> ClusterBreaker:
        return breakers.setdefault(integration.id, ClusterBreaker(
            client, integration.id, integration.circuit_breaker, key_prefix=prefix))

    idempotency = IdempotencyStore(client, key_prefix=prefix)
    gate = Gate(client, idempotency, ClusterRateLimiter(client, key_prefix=prefix),
                RetryBudget(client, key_prefix=prefix), breaker)
    shop = make_integration()
    try:
        passage = gate.enter(shop, "order-1", "job-1", 10_000, "job-1:0:1:0",
                             first_attempt=True, budget_pending=False, max_deliveries=3)
        assert passage.claim.claim is Claim.CLAIMED and passage.permit is not None
        gate.settle(shop, passage.permit, "order-1", "job-1", "job-1", success=True,
                    counts=True)
        again = gate.enter(shop, "order-1", "job-2", 10_000, "job-2:0:1:0",
                           first_attempt=True, budget_pending=False, max_deliveries=3)
        assert again.claim.claim is Claim.SUCCEEDED
        # On the master the Sentinel names (the gate's own connections once went to
        # localhost:6379 instead), under the untagged names earlier versions wrote.
        assert client.get(f"{prefix}idem:shop:order-1:ok") == b"job-1"
    finally:
        gate.close()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
