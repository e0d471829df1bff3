"""The endpoint-label bound is shared by every process through Redis (issue 11 item 4)."""

from __future__ import annotations

import pytest
import redis

from recovery.telemetry.metric_labels import OVERFLOW, EndpointBound, redis_admit

pytestmark = pytest.mark.integration


def test_processes_share_one_endpoint_bound_per_integration(client: redis.Redis,
                                                            prefix: str) -> None:
    first = EndpointBound(redis_admit(client, prefix), limit=20)
    second = EndpointBound(redis_admit(client, prefix), limit=20)  # another worker process
    assert [first.label("crm", f"/a{n}") for n in range(15)] == [f"/a{n}" for n in range(15)]
    labels = [second.label("crm", f"/b{n}") for n in range(15)]
    assert labels == [f"/b{n}" for n in range(5)] + [OVERFLOW] * 10
    assert second.label("crm", "/a3") == "/a3"  # admitted by the other process
    assert second.label("erp", "/b9") == "/b9"  # another integration, another bound
    assert client.scard(f"{prefix}metrics:endpoints:crm") == 20


def test_a_redis_failure_falls_back_to_a_bound_of_this_process() -> None:
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0")
    bound = EndpointBound(redis_admit(dead, "t:"), limit=3)
    labels = [bound.label("crm", f"/p{n}") for n in range(5)]
    assert labels == ["/p0", "/p1", "/p2", OVERFLOW, OVERFLOW]
