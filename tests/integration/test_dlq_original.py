"""A replay sends the ORIGINAL request: property test against a real worker and upstream.

Random bodies, params and job headers (secret-looking names included) are enqueued while the
local upstream fails, so the job dead-letters; then the upstream recovers, the entry is
replayed, and the request that reached the upstream is compared with the original field by
field: method, path, query, body, job headers, Idempotency-Key and the integration's own
credential header. One worker serves every example.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import recovery
from recovery.demo.faultserver import FaultServer
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.dlq.store import EntryFilter, QueueList
from recovery.engine.runtime import get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.test_job_flow import integration

CREDENTIAL = "int3g-cr3dential"
FINAL = {"succeeded", "failed", "dead", "degraded"}
ONE_TRY = {"max_attempts": 1, "initial_delay_ms": 100, "backoff_factor": 2,
           "max_delay_ms": 1000, "jitter": 0}

json_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_keys = st.sampled_from(["password", "max_tokens", "secret", "card", "token"]) | st.text(
    max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(json_keys, inner, max_size=4), max_leaves=12)
bodies = st.none() | st.dictionaries(json_keys, json_values, max_size=5)
params = st.dictionaries(
    st.sampled_from(["api_key", "token", "password", "page", "q"])
    | st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9 _.~:/-]{0,12}", fullmatch=True), max_size=4)
# HTTP header names are case-insensitive: "X-P-a" and "X-P-A" would be one header on the wire.
headers = st.dictionaries(
    st.sampled_from(["X-Auth-Token", "X-Trace", "X-Session"])
    | st.from_regex(r"X-P-[A-Za-z0-9]{1,10}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~:/=-]{1,20}", fullmatch=True), max_size=4,
).filter(lambda named: len({name.lower() for name in named}) == len(named))
paths = st.lists(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), min_size=1,
                 max_size=3).map(lambda parts: "/" + "/".join(parts))
methods = st.sampled_from(["POST", "PUT", "PATCH", "DELETE"])


def _sent(upstream: FaultServer, key: str) -> dict[str, Any]:
    ok = [r for r in upstream.requests() if r["idempotency_key"] == key and r["status"] == 200]
    assert len(ok) == 1, ok
    return ok[0]


def _check_sent(sent: dict[str, Any], method: str, path: str, body: Any,
                query: dict[str, str], job_headers: dict[str, str], key: str) -> None:
    url = urlsplit(sent["path"])
    assert sent["method"] == method and url.path == path
    assert parse_qs(url.query, keep_blank_values=True) == {k: [v] for k, v in query.items()}
    assert (json.loads(sent["body"]) if sent["body"] else None) == body
    received = {name.lower(): value for name, value in sent["headers"].items()}
    for name, value in job_headers.items():
        assert received[name.lower()] == value
    assert received["idempotency-key"] == key
    assert received["x-api-key"] == CREDENTIAL


@pytest.mark.parametrize("keys", [0, 1], ids=["plain", "encrypted"])
def test_a_replayed_request_equals_the_original_field_by_field(
        keys: int, configure, upstream: FaultServer, start_worker, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_API_KEY", CREDENTIAL)
    extra = {"RECOVERY_ENCRYPTION_KEYS": Fernet.generate_key().decode()} if keys else {}
    env = configure([integration(upstream.url, retry=ONE_TRY,
                                 headers={"X-Api-Key": "${SHOP_API_KEY}"})], **extra)
    start_worker(env)
    rt = get_runtime()

    @settings(max_examples=5 if keys == 0 else 2, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(method=methods, path=paths, body=bodies, query=params, job_headers=headers)
    @example(method="POST", path="/completions", body={"password": "hunter2", "max_tokens": 5},
             query={"api_key": "K1"}, job_headers={"X-Auth-Token": "t0k-1", "X-Trace": "a"})
    def replay_matches(method: str, path: str, body: Any, query: dict[str, str],
                       job_headers: dict[str, str]) -> None:
        key = f"prop-{uuid.uuid4().hex}"
        upstream.set_mode("5xx", status=500)
        job_id = recovery.enqueue("shop", method, path, json=body, params=query or None,
                                  headers=job_headers, idempotency_key=key)
        assert wait_for_status(rt.engine, job_id, FINAL)["status"] == "dead"
        upstream.set_mode("ok")
        report = replay_dlq(rt, ReplayOptions(filter=EntryFilter(job_id=job_id)))
        assert report.summary()["replayed"] == 1, report.to_dict()
        assert wait_for_status(rt.engine, job_id, FINAL)["status"] == "succeeded"
        _check_sent(_sent(upstream, key), method, path, body, query, job_headers, key)

    replay_matches()
    assert len(QueueList(redis_client, rt.settings.redis_key_prefix)) == 0
