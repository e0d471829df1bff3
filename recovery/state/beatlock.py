"""Exactly one Celery Beat: a Redis lock taken when beat starts and renewed while it runs.

Two beats would send every health check and DLQ replay twice. The lock is a Redis key
`{prefix}beat:lock` holding the owner's token, set with NX and a TTL (`BEAT_LOCK_TTL`, default
60 s) and renewed every third of it by a background thread. A second beat finds the key held
and exits at once with a sentence naming the holder. A beat that dies stops renewing; its lock
expires within the TTL and the next beat can start. A beat that loses its lock (Redis lost the
key, or it could not renew for a whole TTL) stops scheduling rather than risk a twin.

`install_beat_guard()` connects the guard to Celery's `beat_init` signal, which only a beat
sends (standalone or embedded with `worker -B`); `beat_schedule` installs it on import.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
import structlog
from celery import signals
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from recovery.config.settings import get_settings
from recovery.state.connection import redis_client

log = structlog.get_logger(__name__)


class BeatLockHeld(SystemExit):
    """Another beat holds the lock; raised from `beat_init`, it ends this beat with exit 1."""


class BeatLock:
    """A Redis lock owned by one token, with a TTL that the owner renews.

    redis-py's `Lock` does the work (SET NX PX to take it; token-checked renew and release in
    its own Lua). The token is fixed for the lock's life and readable (host:pid:random), so
    `holder()` can name the beat that holds it; it is shared across threads because the
    `LockKeeper` renews from its own thread.
    """

    def __init__(self, client: redis.Redis, key: str, *, ttl_s: float,
                 token: str | None = None) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = Lock(client, key, timeout=self.ttl_ms / 1000, thread_local=False)

    def _ours(self) -> Lock:
        """The library lock, told our token (a release or a failed renew forgets it)."""
        self._lock.local.token = self.token.encode()
        return self._lock

    def acquire(self) -> bool:
        """Take the lock if it is free (or already ours)."""
        if self._lock.acquire(blocking=False, token=self.token):
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend our lock to its full TTL; False if it is not ours any more."""
        try:
            return self._ours().reacquire()
        except LockNotOwnedError:
            return False

    def release(self) -> bool:
        """Give the lock up if it is ours; never deletes another owner's lock."""
        try:
            self._ours().release()
        except LockNotOwnedError:
            return False
        return True

    def holder(self) -> tuple[str | None, float | None]:
        """(owner token, seconds until it expires) of whoever holds the lock now."""
        pipe = self.client.pipeline()
        pipe.get(self.key)
        pipe.pttl(self.key)
        value, pttl = pipe.execute()
        owner = value.decode() if isinstance(value, bytes) else value
        return owner, (pttl / 1000 if pttl and pttl > 0 else None)


class LockKeeper:
    """Renews a lock every third of its TTL; calls `on_lost` once if it cannot keep it."""

    def __init__(self, lock: BeatLock, on_lost: Callable[[], None]) -> None:
        self.lock = lock
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beat-lock", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        period_s = self.lock.ttl_ms / 3000
        confirmed = time.monotonic()
        while not self._stop.wait(period_s):
            try:
                if not self.lock.renew():
                    self._lost("the lock key is gone or belongs to another beat")
                    return
                confirmed = time.monotonic()
            except redis.RedisError as exc:
                log.warning("beat_lock_renew_failed", key=self.lock.key, error=str(exc))
                if time.monotonic() - confirmed > self.lock.ttl_ms / 1000:
                    self._lost("it could not be renewed for longer than its TTL")
                    return

    def _lost(self, why: str) -> None:
        log.critical("beat_lock_lost", key=self.lock.key, reason=why,
                     action="this beat stops scheduling; start it again once one beat runs")
        self._on_lost()


def lock_for(redis_url: str, prefix: str, ttl_s: float | None = None) -> BeatLock:
    ttl = get_settings().beat_lock_ttl_s if ttl_s is None else ttl_s
    return BeatLock(redis_client(redis_url), f"{prefix}beat:lock", ttl_s=ttl)


def held_message(lock: BeatLock) -> str:
    owner, expires_s = lock.holder()
    expiry = f", expires in {expires_s:.0f} s" if expires_s is not None else ""
    return (
        f"Another Celery beat already holds the beat lock {lock.key!r} (holder {owner}"
        f"{expiry}). Exactly one beat may run: stop the other beat, or wait for its lock to "
        "expire if it died."
    )


def guard_beat(lock: BeatLock, on_lost: Callable[[], None]) -> LockKeeper:
    """Take the lock and keep renewing it; `BeatLockHeld` (exit 1) if another beat has it."""
    if not lock.acquire():
        raise BeatLockHeld(held_message(lock))
    keeper = LockKeeper(lock, on_lost)
    keeper.start()
    atexit.register(_let_go, keeper)
    log.info("beat_lock_acquired", key=lock.key, token=lock.token,
             ttl_s=lock.ttl_ms / 1000)
    return keeper


def _let_go(keeper: LockKeeper) -> None:
    keeper.stop()
    try:
        keeper.lock.release()
    except redis.RedisError as exc:
        log.warning("beat_lock_release_failed", key=keeper.lock.key, error=str(exc))


def _on_beat_start(sender: Any = None, **_: Any) -> None:
    """`beat_init`: take the lock before the first tick; on loss, stop the beat service."""
    settings = get_settings()
    lock = lock_for(settings.redis_url, settings.redis_key_prefix)
    stop = getattr(sender, "stop", None)
    guard_beat(lock, on_lost=stop if callable(stop) else _exit_process)


def _exit_process() -> None:
    os._exit(1)


def install_beat_guard() -> None:
    """Guard every beat this process starts (idempotent; only beats send these signals)."""
    signals.beat_init.connect(_on_beat_start, weak=False, dispatch_uid="recovery-beat-lock")
