"""The result store against the real Redis: TTL, size cap, waiting without polling."""

from __future__ import annotations

import os
import threading
import time

import pytest
import redis

from recovery.core.outcome_value import MalformedOutcomeError, Outcome
from recovery.engine.runtime import redis_client
from recovery.state.results import ResultStore


@pytest.fixture
def store(client: redis.Redis, prefix: str) -> ResultStore:
    connection = redis_client(os.environ["REDIS_URL"])  # the runtime's client: 5 s socket timeout
    return ResultStore(connection, key_prefix=prefix, ttl_s=60, max_body_bytes=64)


def test_put_then_get_round_trips_and_expires_with_the_ttl(store: ResultStore,
                                                          client: redis.Redis) -> None:
    outcome = Outcome("j1", "succeeded", integration="pay", http_status=201, body={"id": "ch_1"})
    kept = store.put(outcome)
    assert kept == outcome
    assert store.get("j1") == outcome
    assert 55 <= client.ttl(store.key("j1")) <= 60
    assert 55 <= client.ttl(store.ready_key("j1")) <= 60
    assert client.llen(store.ready_key("j1")) == 1
    assert store.get("other") is None


def test_an_oversized_body_is_not_kept_and_the_outcome_says_so(store: ResultStore) -> None:
    kept = store.put(Outcome("big", "succeeded", http_status=200, body="x" * 100))
    assert kept.body is None
    assert kept.body_omitted == (
        "The response body was 102 bytes, over RESULT_MAX_BYTES (64 bytes), so it was not "
        "kept; raise RESULT_MAX_BYTES or have the upstream return less.")
    assert store.get("big") == kept


def test_wait_returns_at_once_when_done_and_none_after_the_timeout(store: ResultStore) -> None:
    store.put(Outcome("done", "dead", error="HTTP 500 on attempt 3 of 3"))
    started = time.monotonic()
    assert store.wait("done", 5).status == "dead"  # type: ignore[union-attr]
    assert store.wait("never", 0.3) is None
    assert time.monotonic() - started < 3


def test_every_waiter_wakes_when_the_outcome_is_written(store: ResultStore) -> None:
    seen: list[Outcome | None] = []

    def waiter() -> None:
        seen.append(store.wait("later", 10))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    store.put(Outcome("later", "degraded", fallback="cache", body={"cached": True}))
    for thread in threads:
        thread.join(10)
    assert [o.status if o else None for o in seen] == ["degraded"] * 3


def test_a_newer_outcome_replaces_the_older_one(store: ResultStore) -> None:
    store.put(Outcome("r", "dead", error="no"))
    store.put(Outcome("r", "succeeded", http_status=200, body=[1], replay_count=1))
    found = store.get("r")
    assert found is not None and found.status == "succeeded" and found.replay_count == 1


def test_the_in_process_twin_keeps_the_same_promises() -> None:
    local = ResultStore(None, ttl_s=1, max_body_bytes=10)
    got: list[Outcome | None] = []
    thread = threading.Thread(target=lambda: got.append(local.wait("a", 5)))
    thread.start()
    time.sleep(0.1)
    local.put(Outcome("a", "succeeded", body="y" * 20))
    thread.join(5)
    assert got[0] is not None and got[0].body is None and got[0].body_omitted
    time.sleep(1.1)
    assert local.get("a") is None


def test_a_stored_value_that_is_not_an_outcome_is_refused() -> None:
    with pytest.raises(MalformedOutcomeError, match="not a final status"):
        Outcome("x", "running")  # type: ignore[arg-type]
    with pytest.raises(MalformedOutcomeError, match="version 9"):
        Outcome.from_dict({"job_id": "x", "status": "dead", "version": 9})


def test_with_encryption_keys_the_outcome_is_stored_sealed(client: redis.Redis,
                                                           prefix: str) -> None:
    from cryptography.fernet import Fernet

    from recovery.core.crypto import cipher_for

    cipher = cipher_for([Fernet.generate_key().decode()])
    sealed = ResultStore(redis_client(os.environ["REDIS_URL"]), key_prefix=prefix, ttl_s=60,
                         cipher=cipher)
    outcome = Outcome("enc", "succeeded", http_status=200, body={"card": "4242-s3cret"})
    sealed.put(outcome)
    raw = client.get(sealed.key("enc")) or b""
    assert b"4242-s3cret" not in raw and raw.startswith(b'{"fernet": "gAAAA')
    assert sealed.get("enc") == outcome and sealed.wait("enc", 1) == outcome
    keyless = ResultStore(redis_client(os.environ["REDIS_URL"]), key_prefix=prefix, ttl_s=60)
    with pytest.raises(MalformedOutcomeError) as refused:
        keyless.get("enc")
    assert str(refused.value) == ("The result is encrypted and RECOVERY_ENCRYPTION_KEYS is not "
                                  "set here; set the same keys as the workers.")
    other = ResultStore(redis_client(os.environ["REDIS_URL"]), key_prefix=prefix, ttl_s=60,
                        cipher=cipher_for([Fernet.generate_key().decode()]))
    with pytest.raises(MalformedOutcomeError, match="could not be read"):
        other.get("enc")


def test_waiting_longer_than_the_socket_timeout_still_wakes(store: ResultStore) -> None:
    timer = threading.Timer(5.0, lambda: store.put(Outcome("slow", "succeeded")))
    timer.start()
    try:
        started = time.monotonic()
        found = store.wait("slow", 15)
        assert found is not None and found.status == "succeeded"
        assert 4.5 < time.monotonic() - started < 10
    finally:
        timer.cancel()
