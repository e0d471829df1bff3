"""The in-process breaker: the rules of `breaker.lua`, for one process only.

It serves `ClusterBreaker(None, ...)` (the demo without Redis) and stands in while Redis cannot
be reached. State is shared by every `ClusterBreaker` of the same key in this process, so
building a breaker per job does not forget failures; a forked child starts afresh.
The lock is held only while a decision is made, never across the guarded call.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from recovery.state.breaker.types import (
    Grant,
    Limits,
    Outcome,
    RawSnapshot,
    State,
    Transition,
    utc_from_ms,
)

BUCKETS = 10


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _State:
    state: State = "closed"
    epoch: int = 0
    failures: int = 0
    opened_at_ms: int | None = None
    open_until_ms: int | None = None
    half_ok: int = 0
    failed_probes: int = 0  # failed probes in a row; each one lengthens the next open period
    probes: dict[str, int] = field(default_factory=dict)
    # bucket slot -> (bucket index, calls, failures)
    window: dict[int, tuple[int, int, int]] = field(default_factory=dict)


def _bucket_of(now: int, window_ms: int) -> int:
    return now // max(1, math.ceil(window_ms / BUCKETS))


class LocalBackend:
    """One breaker's state in this process; same decisions as the Lua scripts."""

    def __init__(self, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._s = _State()

    def acquire(self, limits: Limits, token: str) -> Grant:
        with self._lock:
            s = self._s
            if s.state == "closed":
                return Grant(True, False, s.epoch, 0.0, "closed")
            now = self._clock_ms()
            moved: Transition | None = None
            if s.state == "open":
                open_until = s.open_until_ms or 0
                if now < open_until:
                    return Grant(False, False, s.epoch, (open_until - now) / 1000, "open")
                s.state, s.epoch, s.half_ok, s.probes = "half_open", s.epoch + 1, 0, {}
                moved = Transition("open", "half_open", "reset_timeout_elapsed", utc_from_ms(now))
            s.probes = {t: ends for t, ends in s.probes.items() if ends > now}
            if len(s.probes) < limits.max_probes:
                s.probes[token] = now + limits.lease_ms
                return Grant(True, True, s.epoch, 0.0, "half_open", moved)
            wait_ms = min(min(s.probes.values()) - now, limits.reset_ms)
            return Grant(False, False, s.epoch, wait_ms / 1000, "half_open", moved)

    def record(
        self, limits: Limits, epoch: int | None, token: str, outcome: Outcome
    ) -> Transition | None:
        """Apply an outcome. `epoch` None means "the current one" (a permit of another backend)."""
        with self._lock:
            s = self._s
            if epoch is not None and epoch != s.epoch:
                return None
            now = self._clock_ms()
            if token:
                return self._record_probe(limits, token, outcome, now)
            if s.state != "closed" or outcome == "neutral":
                return None
            failed = outcome == "failure"
            s.failures = s.failures + 1 if failed else 0
            self._window_add(now, limits.window_ms, failed)
            reason = self._trip_reason(limits, now, failed)
            if reason is None:
                return None
            self._open(now, limits.open_ms(s.failed_probes))
            return Transition("closed", "open", reason, utc_from_ms(now))

    def _record_probe(
        self, limits: Limits, token: str, outcome: Outcome, now: int
    ) -> Transition | None:
        s = self._s
        if s.state != "half_open":
            return None
        s.probes.pop(token, None)
        if outcome == "failure":
            s.failed_probes += 1
            self._open(now, limits.open_ms(s.failed_probes))
            return Transition("half_open", "open", "probe_failed", utc_from_ms(now))
        if outcome == "success":
            s.half_ok += 1
            if s.half_ok >= limits.success_threshold:
                self._close()
                return Transition("half_open", "closed", "probe_succeeded", utc_from_ms(now))
        return None

    def _trip_reason(self, limits: Limits, now: int, failed: bool) -> str | None:
        if failed and self._s.failures >= limits.threshold:
            return f"consecutive_failures={self._s.failures}"
        if limits.failure_rate is None:
            return None
        calls, fails = self._window_totals(now, limits.window_ms)
        if calls >= limits.minimum_calls and fails / calls >= limits.failure_rate:
            return f"failure_rate={fails / calls:.2f} over {calls} calls"
        return None

    def force(self, limits: Limits, action: str, open_ms: int, reason: str) -> Transition | None:
        with self._lock:
            before = self._s.state
            now = self._clock_ms()
            if action == "open":
                self._open(now, open_ms)
            else:
                self._close()
            if before == self._s.state:
                return None
            return Transition(before, self._s.state, reason, utc_from_ms(now))

    def snapshot(self, limits: Limits) -> RawSnapshot:
        with self._lock:
            s = self._s
            now = self._clock_ms()
            calls, fails = self._window_totals(now, limits.window_ms)
            live = sum(1 for ends in s.probes.values() if ends > now)
            return RawSnapshot(
                s.state, s.failures, s.opened_at_ms, s.open_until_ms, live, calls, fails, now,
                s.failed_probes,
            )

    def _open(self, now: int, open_ms: int) -> None:
        s = self._s
        s.state, s.epoch, s.half_ok, s.probes, s.window = "open", s.epoch + 1, 0, {}, {}
        s.opened_at_ms, s.open_until_ms = now, now + open_ms

    def _close(self) -> None:
        s = self._s
        s.state, s.epoch, s.failures, s.half_ok, s.failed_probes = "closed", s.epoch + 1, 0, 0, 0
        s.probes, s.window, s.opened_at_ms, s.open_until_ms = {}, {}, None, None

    def _window_add(self, now: int, window_ms: int, failed: bool) -> None:
        current = _bucket_of(now, window_ms)
        slot = current % BUCKETS
        index, calls, fails = self._s.window.get(slot, (current, 0, 0))
        if index != current:
            calls, fails = 0, 0
        self._s.window[slot] = (current, calls + 1, fails + int(failed))

    def _window_totals(self, now: int, window_ms: int) -> tuple[int, int]:
        current = _bucket_of(now, window_ms)
        live = [(c, f) for index, c, f in self._s.window.values() if index > current - BUCKETS]
        return sum(c for c, _ in live), sum(f for _, f in live)


_backends: dict[str, LocalBackend] = {}
_backends_lock = threading.Lock()


def local_backend(key: str) -> LocalBackend:
    """The process-wide in-memory state for one breaker key."""
    with _backends_lock:
        found = _backends.get(key)
        if found is None:
            found = _backends[key] = LocalBackend()
        return found


def _forget_after_fork() -> None:
    global _backends_lock
    _backends_lock = threading.Lock()
    _backends.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
