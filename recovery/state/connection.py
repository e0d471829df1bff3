"""The Redis client every shared state uses: fail fast, because each has an in-process twin."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def redis_client(url: str) -> redis.Redis:
    """A Redis client that fails fast: a stalled Redis must not stall a job for long.

    Every component has an in-process fallback, so one quick retry is enough; redis-py's own
    default (ten retries with growing backoff) would hold each call for seconds while Redis is
    down.
    """
    return redis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )
