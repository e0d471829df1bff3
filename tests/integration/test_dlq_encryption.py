"""Encryption at rest and the replay gate, against real Redis and PostgreSQL.

With RECOVERY_ENCRYPTION_KEYS set, no plaintext of a job reaches Redis (work queue and DLQ);
rotation keeps old tokens readable; a DLQ entry whose original cannot be read (wrong key,
tampered token, no original at all) or fails the enqueue checks is quarantined with a reason
and never replayed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from structlog.testing import capture_logs

import recovery
from recovery.core.crypto import CONTENT_TYPE, Cipher
from recovery.core.message import JobSpec, new_job_id, utc_now_iso
from recovery.demo.faultserver import FaultServer
from recovery.dlq.envelope import LEGACY_KIND, envelope_for
from recovery.dlq.park import publish
from recovery.dlq.publishing import publish_message
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.engine.producer import EnqueueError, build_job
from recovery.engine.runtime import Runtime, get_runtime
from tests.integration.conftest import wait_for_status
from tests.integration.test_dlq_replay import dead_letter_state
from tests.integration.test_dlq_support import (
    bodies,
    dlq_ids,
    integration_entry,
    key,
    raw_list,
    record_dead,
)
from tests.integration.test_job_flow import integration

SECRETS = ("hunter2-b0dy", "K1-p4ram", "t0k-h3ader")
KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def secret_job(path: str = "/completions", headers: dict[str, str] | None = None) -> JobSpec:
    return JobSpec(job_id=new_job_id(), integration="shop", method="POST", path=path,
                   json={"password": "hunter2-b0dy", "max_tokens": 5},
                   params={"api_key": "K1-p4ram"},
                   headers=headers if headers is not None else {"X-Auth-Token": "t0k-h3ader"},
                   idempotency_key=f"key-{uuid.uuid4().hex}", enqueued_at=utc_now_iso())


def park_job(rt: Runtime, job: JobSpec, cipher: Cipher | None) -> None:
    envelope = envelope_for(job, categories=["server_error"], last_status=503,
                            message="HTTP 503", attempts=3, dead_at=utc_now_iso(), cipher=cipher)
    publish(envelope)
    record_dead(rt, envelope)


def payload(raw: bytes) -> tuple[str, bytes]:
    """A kombu Redis message's content type and body bytes (base64 undone)."""
    message = json.loads(raw)
    body = message["body"].encode()
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return message["content-type"], body


def _bodies_in(value: Any) -> list[bytes]:
    """Every kombu message body inside a decoded JSON value (a message, or the unacked hash's
    [message, exchange, routing key]), base64 undone."""
    if isinstance(value, list):
        return [body for item in value for body in _bodies_in(item)]
    if isinstance(value, dict) and isinstance(value.get("body"), str):
        return [payload(json.dumps(value).encode())[1]]
    return []


def all_redis_bytes(client: redis.Redis, prefix: str) -> bytes:
    """Every value under the prefix (lists, strings, hashes, streams), message bodies decoded."""
    chunks: list[bytes] = []
    for name in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(name)
        if kind == b"list":
            chunks += client.lrange(name, 0, -1)
        elif kind == b"string":
            chunks.append(client.get(name) or b"")
        elif kind == b"hash":
            chunks += [k + b" " + v for k, v in client.hgetall(name).items()]
            chunks += list(client.hvals(name))
        elif kind == b"stream":
            chunks += [b" ".join(part for pair in fields.items() for part in pair)
                       for _, fields in client.xrange(name)]
    decoded = []
    for chunk in chunks:
        decoded.append(chunk)
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            decoded += _bodies_in(json.loads(chunk))
    return b"\n".join(decoded)


@pytest.fixture
def shop(configure: Callable[..., dict[str, str]],
         redis_client: redis.Redis) -> Callable[..., Runtime]:
    def apply(**env: str) -> Runtime:
        configure([integration_entry("shop")], **env)
        return get_runtime()
    return apply


def work_messages(client: redis.Redis, rt: Runtime) -> list[tuple[str, bytes]]:
    return [payload(raw) for raw in raw_list(client, rt, "integrations")]


def test_with_a_key_redis_holds_no_plaintext_of_a_job(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    rt = shop(RECOVERY_ENCRYPTION_KEYS=KEY_A)
    job_id = recovery.enqueue("shop", "POST", "/completions", json={"password": "hunter2-b0dy"},
                              params={"api_key": "K1-p4ram"},
                              headers={"X-Auth-Token": "t0k-h3ader"})
    park_job(rt, secret_job(), Cipher([KEY_A]))
    stored = all_redis_bytes(redis_client, rt.settings.redis_key_prefix)
    assert [s for s in SECRETS if s.encode() in stored] == []
    [(content_type, token)] = work_messages(redis_client, rt)
    assert content_type == CONTENT_TYPE
    _, kwargs, _ = Cipher([KEY_A]).open_json(token)
    assert kwargs["job"]["job_id"] == job_id and kwargs["job"]["params"] == {
        "api_key": "K1-p4ram"}
    [entry] = bodies(redis_client, rt, "dlq")
    assert entry["original"]["format"] == "fernet"
    assert "[REDACTED]" in json.dumps(entry["body"])  # the display copy, as the policy shows it


def test_rotation_old_key_still_decrypts_and_the_replay_uses_the_new_one(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    rt = shop(RECOVERY_ENCRYPTION_KEYS=KEY_A)
    job = secret_job()
    park_job(rt, job, Cipher([KEY_A]))
    rt = shop(RECOVERY_ENCRYPTION_KEYS=f"{KEY_B},{KEY_A}")
    report = replay_dlq(rt, ReplayOptions())
    assert report.summary()["replayed"] == 1, report.to_dict()
    [(content_type, token)] = work_messages(redis_client, rt)
    assert content_type == CONTENT_TYPE
    _, kwargs, _ = Cipher([KEY_B]).open_json(token)  # the first key encrypts
    assert kwargs["job"] == {**job.to_message(), "replay_count": 1}


UNDECRYPTABLE = ("unreadable: the original request could not be decrypted with "
                 "RECOVERY_ENCRYPTION_KEYS (written with another key, or altered)")


def tamper(rt: Runtime, client: redis.Redis) -> None:
    """Flip one character inside the DLQ entry's token."""
    [entry] = bodies(client, rt, "dlq")
    token = entry["original"]["token"]
    flipped = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
    client.delete(key(rt, "dlq"))
    publish_message({**entry, "original": {"format": "fernet", "token": flipped}}, "dlq")


@pytest.mark.parametrize(("keys", "tampered", "reason"), [
    (KEY_B, False, UNDECRYPTABLE),
    (KEY_A, True, UNDECRYPTABLE),
    ("", False, "unreadable: the original request is encrypted and RECOVERY_ENCRYPTION_KEYS "
                "is not set"),
], ids=["wrong-key", "tampered", "no-key"])
def test_an_unreadable_original_is_quarantined_with_its_reason_never_replayed(
        keys: str, tampered: bool, reason: str, shop: Callable[..., Runtime],
        redis_client: redis.Redis) -> None:
    rt = shop(RECOVERY_ENCRYPTION_KEYS=KEY_A)
    job = secret_job()
    park_job(rt, job, Cipher([KEY_A]))
    if tampered:
        tamper(rt, redis_client)
    rt = shop(RECOVERY_ENCRYPTION_KEYS=keys)
    with capture_logs() as logs:
        report = replay_dlq(rt, ReplayOptions())
    assert report.summary()["quarantined"] == 1 and report.summary()["replayed"] == 0
    assert [item.reason for item in report.items] == [reason]
    assert raw_list(redis_client, rt, "integrations") == [] and dlq_ids(redis_client, rt) == []
    [record] = bodies(redis_client, rt, "dlq.quarantine")
    assert (record["job_id"], record["reason"]) == (job.job_id, reason)
    assert record["original"]["format"] == "fernet"  # kept, for a release with the right key
    assert dead_letter_state(rt, job.job_id) == "quarantined"
    alerts = [e for e in logs if e["event"] == "alert_dlq_entry_unreplayable"]
    assert len(alerts) == 1 and reason in alerts[0]["alert_message"]


def expected_refusal(rt: Runtime, job: JobSpec) -> str:
    with pytest.raises(EnqueueError) as refused:
        build_job(rt.registry, job.integration, job.method, job.path, json=job.json,
                  params=job.params, headers=job.headers, idempotency_key=job.idempotency_key)
    return f"refused by the enqueue checks: {refused.value}"


@pytest.mark.parametrize("job", [
    secret_job(path="/../admin"),
    secret_job(path="//evil.example/x"),
    secret_job(headers={"X-Trace": "a\r\nX-Injected: 1"}),
], ids=["dot-dot-path", "authority-path", "header-injection"])
def test_a_tampered_path_or_header_is_quarantined_by_the_enqueue_checks(
        job: JobSpec, shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    rt = shop()
    park_job(rt, job, None)
    reason = expected_refusal(rt, job)
    report = replay_dlq(rt, ReplayOptions())
    assert [(item.cause, item.reason) for item in report.items] == [("unreplayable", reason)]
    assert raw_list(redis_client, rt, "integrations") == []
    assert [r["reason"] for r in bodies(redis_client, rt, "dlq.quarantine")] == [reason]


def test_an_old_redacted_only_envelope_is_quarantined_never_replayed_half_redacted(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    rt = shop()
    legacy: dict[str, Any] = envelope_for(
        secret_job(), categories=["server_error"], last_status=503, message="HTTP 503",
        attempts=3, dead_at=utc_now_iso()).view() | {"kind": LEGACY_KIND}
    publish_message(legacy, "dlq")
    report = replay_dlq(rt, ReplayOptions())
    assert [item.reason for item in report.items] == [
        "unreadable: the entry was dead-lettered by an older version that kept only the "
        "redacted request; replaying it would send redacted values, so enqueue the job again "
        "from its source"]
    assert raw_list(redis_client, rt, "integrations") == []
    assert [r["job_id"] for r in bodies(redis_client, rt, "dlq.quarantine")] == [
        legacy["job_id"]]


def test_a_work_message_no_key_opens_is_quarantined_not_dropped(
        shop: Callable[..., Runtime], start_worker, redis_client: redis.Redis) -> None:
    rt = shop(RECOVERY_ENCRYPTION_KEYS=KEY_A)
    recovery.enqueue("shop", "POST", "/x", json={"password": "hunter2-b0dy"})
    env = {**os.environ, "RECOVERY_ENCRYPTION_KEYS": KEY_B}
    start_worker(env, concurrency=1)
    deadline = time.monotonic() + 30
    while not raw_list(redis_client, rt, "dlq.quarantine") and time.monotonic() < deadline:
        time.sleep(0.2)
    [record] = bodies(redis_client, rt, "dlq.quarantine")
    assert record["reason"].startswith("undecryptable: a work-queue message could not be "
                                       "decrypted with RECOVERY_ENCRYPTION_KEYS")
    assert Cipher([KEY_A]).open_json(record["original"]["token"])[1]["job"]["json"] == {
        "password": "hunter2-b0dy"}
    assert raw_list(redis_client, rt, "integrations") == []


def test_an_encrypted_job_retries_and_succeeds_with_no_plaintext_in_redis_meanwhile(
        configure: Callable[..., dict[str, str]], upstream: FaultServer, start_worker,
        redis_client: redis.Redis) -> None:
    retry = {"max_attempts": 2, "initial_delay_ms": 2000, "backoff_factor": 2,
             "max_delay_ms": 5000, "jitter": 0}
    env = configure([integration(upstream.url, retry=retry)], RECOVERY_ENCRYPTION_KEYS=KEY_A)
    rt = get_runtime()
    upstream.set_script([500, 200])
    start_worker(env, concurrency=1)
    job_id = recovery.enqueue("shop", "POST", "/completions", json={"password": "hunter2-b0dy"},
                              params={"api_key": "K1-p4ram"},
                              headers={"X-Auth-Token": "t0k-h3ader"})
    wait_for_status(rt.engine, job_id, {"retrying"}, timeout=30)
    assert len(upstream.requests()) == 1  # the retry waits out its countdown, held in Redis
    stored = all_redis_bytes(redis_client, rt.settings.redis_key_prefix)
    assert b"/completions" in stored  # the scan sees the job's redacted reprs and audit rows
    assert [s for s in SECRETS if s.encode() in stored] == []
    assert wait_for_status(rt.engine, job_id, {"succeeded", "dead"})["status"] == "succeeded"
    last = upstream.requests()[-1]
    assert json.loads(last["body"]) == {"password": "hunter2-b0dy"}
    assert "api_key=K1-p4ram" in last["path"] and last["headers"]["X-Auth-Token"] == "t0k-h3ader"


def test_an_entry_quarantined_for_a_missing_key_is_released_once_the_key_is_back(
        shop: Callable[..., Runtime], redis_client: redis.Redis) -> None:
    from recovery.dlq.purge import ReleaseError, release

    rt = shop(RECOVERY_ENCRYPTION_KEYS=KEY_A)
    job = secret_job()
    park_job(rt, job, Cipher([KEY_A]))
    rt = shop(RECOVERY_ENCRYPTION_KEYS=KEY_B)
    assert replay_dlq(rt, ReplayOptions()).summary()["quarantined"] == 1
    with pytest.raises(ReleaseError) as refused:
        release(rt, job.job_id)
    assert str(refused.value) == (f"The quarantined entry {job.job_id!r} cannot be released: "
                                  f"{UNDECRYPTABLE}.")
    assert raw_list(redis_client, rt, "integrations") == []
    rt = shop(RECOVERY_ENCRYPTION_KEYS=f"{KEY_B},{KEY_A}")
    released = release(rt, job.job_id)
    assert released.replay_count == 1 and raw_list(redis_client, rt, "dlq.quarantine") == []
    [(_, token)] = work_messages(redis_client, rt)
    assert Cipher([KEY_B]).open_json(token)[1]["job"]["json"] == job.json
