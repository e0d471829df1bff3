"""Exactly one beat: the Redis lock, its renewal, and a second real beat refused at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from recovery.state.beatlock import BeatLock, BeatLockHeld, LockKeeper, guard_beat

REPO = Path(__file__).resolve().parents[2]
BEAT_COMMAND = [sys.executable, "-m", "celery", "-A", "recovery.celery_app", "beat",
                "-l", "info"]


@pytest.fixture
def key(redis_client: redis.Redis) -> Iterator[str]:
    name = f"{os.environ['RECOVERY_REDIS_PREFIX']}beat:lock:{uuid.uuid4().hex[:8]}"
    yield name
    redis_client.delete(name)


def test_one_owner_at_a_time_and_only_the_owner_renews_or_releases(
    redis_client: redis.Redis, key: str
) -> None:
    first = BeatLock(redis_client, key, ttl_s=30, token="first")
    second = BeatLock(redis_client, key, ttl_s=30, token="second")

    assert first.acquire()
    assert not second.acquire()
    assert not second.renew()
    assert not second.release()
    owner, expires_s = first.holder()
    assert owner == "first"
    assert expires_s is not None and 0 < expires_s <= 30
    assert first.release()
    assert second.acquire()
    assert second.holder()[0] == "second"


def test_a_second_guard_exits_with_a_message_naming_the_holder(
    redis_client: redis.Redis, key: str
) -> None:
    keeper = guard_beat(BeatLock(redis_client, key, ttl_s=30, token="host-a:1:abc"),
                        on_lost=lambda: None)
    try:
        with pytest.raises(BeatLockHeld) as refused:
            guard_beat(BeatLock(redis_client, key, ttl_s=30, token="host-b:2:def"),
                       on_lost=lambda: None)
    finally:
        keeper.stop()

    message = str(refused.value)
    assert message.startswith("Another Celery beat already holds the beat lock")
    assert "host-a:1:abc" in message
    assert "Exactly one beat may run" in message


def test_the_keeper_renews_the_lock_past_its_ttl(redis_client: redis.Redis, key: str) -> None:
    lock = BeatLock(redis_client, key, ttl_s=0.3, token="keeper")
    assert lock.acquire()
    keeper = LockKeeper(lock, on_lost=lambda: None)
    keeper.start()
    try:
        time.sleep(0.8)
        assert redis_client.get(key) == b"keeper"
    finally:
        keeper.stop()


def test_the_keeper_reports_a_lost_lock_once(redis_client: redis.Redis, key: str) -> None:
    lost = threading.Event()
    calls: list[int] = []

    def on_lost() -> None:
        calls.append(1)
        lost.set()

    lock = BeatLock(redis_client, key, ttl_s=0.3, token="mine")
    assert lock.acquire()
    keeper = LockKeeper(lock, on_lost)
    keeper.start()
    redis_client.set(key, "someone-else")

    assert lost.wait(5)
    keeper.stop()
    assert calls == [1]
    assert redis_client.get(key) == b"someone-else"


def _beat(env: dict[str, str], schedule: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*BEAT_COMMAND, "--schedule", str(schedule)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_a_second_real_beat_exits_and_the_first_releases_the_lock_on_sigterm(
    configure: Callable[..., dict[str, str]], redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = configure()
    lock_key = f"{env['RECOVERY_REDIS_PREFIX']}beat:lock"
    first = _beat(env, tmp_path / "first")
    try:
        deadline = time.monotonic() + 30
        while redis_client.get(lock_key) is None and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[0].decode()
            time.sleep(0.1)
        holder = redis_client.get(lock_key)
        assert holder is not None

        second = _beat(env, tmp_path / "second")
        output = second.communicate(timeout=60)[0].decode()
        assert second.returncode == 1, output
        assert "Another Celery beat already holds the beat lock" in output
        assert holder.decode() in output
        assert first.poll() is None
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)
        first_output = first.communicate(timeout=30)[0].decode()

    assert first.returncode == 0, first_output
    assert redis_client.get(lock_key) is None
