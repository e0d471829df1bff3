"""A careless or hostile producer: random input is refused cleanly or stays inside the base URL."""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
import uuid
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recovery
from recovery.faultserver import FaultServer
from recovery.producer import EnqueueError
from recovery.runtime import get_runtime
from recovery.urlguard import is_inside, join_url
from tests.integration.test_job_flow import integration, queue_depth

BASE = "http://127.0.0.1:9/api/v1"

paths = st.one_of(
    st.text(max_size=60),
    st.builds(lambda parts: "/" + "/".join(parts),
              st.lists(st.sampled_from(["a", "..", ".", "%2e%2e", "%2E.", "%252e%252e", "\\",
                                        "%5c", "//x", "http:", "é", "\x00", "%0d%0a", "@h",
                                        "?q=1", "#f", "b c"]), max_size=6)),
    st.just("/" + "a" * 10_000),
)
methods = st.one_of(st.sampled_from(["GET", "post", "Delete", "TRACE", "CONNECT", ""]),
                    st.text(max_size=8))
headers = st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=3)
bodies = st.one_of(st.none(), st.integers(), st.text(max_size=30),
                   st.dictionaries(st.text(max_size=5), st.floats(allow_nan=True), max_size=3),
                   st.builds(object))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=methods, path=paths, hdrs=headers, body=bodies)
def test_random_input_is_refused_or_stays_inside_the_base_url(
        configure, upstream: FaultServer, redis_client: redis.Redis, method: str, path: str,
        hdrs: dict[str, str], body: Any) -> None:
    if "RECOVERY_INTEGRATIONS" not in os.environ:  # once per test; hypothesis reuses fixtures
        configure([integration(BASE)])
    before = queue_depth(redis_client)
    try:
        job_id = recovery.enqueue("shop", method, path, json=body, headers=hdrs)
    except EnqueueError as refused:
        message = str(refused)
        assert message and message[-1] in ".)'\"", message
        assert queue_depth(redis_client) == before
        return
    assert queue_depth(redis_client) == before + 1
    message = redis_client.lpop(f"{get_runtime().settings.redis_key_prefix}integrations")
    assert message is not None
    job = _kwargs(message)["job"]
    assert job["job_id"] == job_id
    assert is_inside(BASE, join_url(BASE, job["path"]))


def _kwargs(raw: bytes) -> dict[str, Any]:
    """The kwargs of a Celery protocol-2 message as the Redis transport stores it."""
    envelope = json.loads(raw)
    args_kwargs_embed = json.loads(base64.b64decode(envelope["body"]))
    return dict(args_kwargs_embed[1])


def test_pickled_message_is_refused_and_never_executed(
        configure, upstream: FaultServer, redis_client: redis.Redis, start_worker) -> None:
    env = configure([integration(upstream.url)])
    worker = start_worker(env, concurrency=1)
    prefix = get_runtime().settings.redis_key_prefix
    task_id = str(uuid.uuid4())
    job = {"job_id": task_id, "integration": "shop", "method": "GET", "path": "/pickled",
           "idempotency_key": task_id}
    body = pickle.dumps(((), {"job": job}, {}))
    message = {
        "body": base64.b64encode(body).decode(), "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": "tasks.integration.call", "id": task_id,
                    "root_id": task_id, "parent_id": None, "group": None},
        "properties": {"correlation_id": task_id, "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "integrations"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    }
    redis_client.lpush(f"{prefix}integrations", json.dumps(message))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "pickle" not in worker.log().lower():
        time.sleep(0.2)
    assert "pickle" in worker.log().lower() or "content" in worker.log().lower()
    time.sleep(1)
    assert upstream.requests() == [], "a pickled message was executed"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=methods, path=paths,
       header=st.one_of(st.text(max_size=30), st.just("X-A: b\r\nInjected: 1")),
       body=st.one_of(st.none(), st.text(max_size=40), st.just('{"a": NaN}'),
                      st.just("x" * (1024 * 1024 + 10))))
def test_random_cli_input_exits_2_with_a_sentence_or_stays_inside_the_base_url(
        configure, upstream: FaultServer, redis_client: redis.Redis, method: str, path: str,
        header: str, body: str | None) -> None:
    from click.testing import CliRunner

    from recovery.cli import main

    if "RECOVERY_INTEGRATIONS" not in os.environ:  # once per test; hypothesis reuses fixtures
        configure([integration(BASE)])
    if "\x00" in method + path + header + (body or ""):
        return  # a process argument cannot carry NUL; the shell would refuse it first
    args = ["enqueue", "shop", method, path, "--header", header]
    if body is not None:
        args += ["--json", body]
    before = queue_depth(redis_client)
    result = CliRunner().invoke(main, args)
    if result.exit_code != 0:
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ") or "Usage:" in result.output, result.output
        assert "Traceback" not in result.output
        assert queue_depth(redis_client) == before
        return
    assert queue_depth(redis_client) == before + 1
    raw = redis_client.lpop(f"{get_runtime().settings.redis_key_prefix}integrations")
    assert raw is not None
    job = _kwargs(raw)["job"]
    assert job["job_id"] == result.output.strip()
    assert is_inside(BASE, join_url(BASE, job["path"]))
