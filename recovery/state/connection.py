"""The Redis client every shared state uses: one Redis, a Redis Cluster, or the master the
Sentinels name; failing fast, because each state has an in-process twin.

`redis_client(REDIS_URL)` builds the client every component gets (`recovery.engine.runtime`). On a
Redis Cluster every script must touch keys of one slot only: each integration's keys carry
the hash tag `{integration}` (`integration_tag`), so its breaker, rate limit and pause, retry
budget, tokens and idempotency records live in one slot, and the gate's combined script (claim,
rate limit, breaker, budget in one EVALSHA) stays on it. redis-py's cluster client refuses a
command whose keys span slots (`RedisClusterException`), so a key built without the tag fails
loudly rather than on some other node.

On a single Redis or through Sentinel the keys keep their untagged names, so an upgrade finds
the records (idempotency above all) where earlier versions wrote them.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from recovery.config import redis_urls

#: Timeouts every state-store connection uses: a stalled Redis must not stall a job for long.
TIMEOUTS: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}


def _retry() -> Retry:
    """One quick retry: every component has an in-process fallback, and redis-py's default
    (ten retries with growing backoff) would hold each call for seconds while Redis is down."""
    return Retry(ExponentialBackoff(cap=0.2, base=0.05), 1)


def redis_client(url: str) -> redis.Redis:
    """The state store's client for REDIS_URL (validated by settings), failing fast.

    A `RedisCluster` is returned typed as `redis.Redis`: it answers the same commands for
    keys of one slot, which is all our components send it (`integration_tag`)."""
    target = redis_urls.parse(url)
    if target.kind == "cluster":
        return cast(redis.Redis, _cluster(target))
    if target.kind == "sentinel":
        return _sentinel_master(target)
    return redis.Redis.from_url(url, health_check_interval=30, retry=_retry(), **TIMEOUTS)


def _cluster(target: redis_urls.RedisTarget) -> RedisCluster:
    nodes = [ClusterNode(host, port) for host, port in target.nodes]
    return RedisCluster(startup_nodes=nodes, username=target.username,
                        password=target.password, ssl=target.tls, retry=_retry(), **TIMEOUTS)


def _sentinel_master(target: redis_urls.RedisTarget) -> redis.Redis:
    """The master that the Sentinels name for the service; it is looked up again whenever a
    connection to it fails (a failover)."""
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=dict(TIMEOUTS), **TIMEOUTS)
    master: redis.Redis = sentinel.master_for(
        target.service or "", db=target.db, username=target.username, password=target.password,
        ssl=target.tls, retry=_retry(), health_check_interval=30)
    return master


def is_cluster(client: Any) -> bool:
    """Whether `client` speaks to a Redis Cluster."""
    return _is_cluster_type(client.__class__)


@cache
def _is_cluster_type(kind: type) -> bool:
    """Asked once per client class: `RedisCluster` is a typing Protocol underneath, which makes
    every isinstance check against it slow, and the gate asks for each key it names."""
    return issubclass(kind, RedisCluster)


def integration_tag(client: Any, integration: str) -> str:
    """How an integration's id appears in its keys: `{id}` on a Redis Cluster (a hash tag,
    so all of its keys share a slot), the bare id elsewhere. Integration ids never hold braces
    (`recovery.integrations_file`)."""
    return f"{{{integration}}}" if is_cluster(client) else integration


_shared: dict[tuple[str, int], redis.Redis] = {}


def shared_client(url: str) -> redis.Redis:
    """One client per URL for this process (a forked process makes its own), for code below
    the engine that has no runtime at hand (the DLQ's writers)."""
    key = (url, os.getpid())
    client = _shared.get(key)
    if client is None:
        client = _shared[key] = redis_client(url)
    return client
