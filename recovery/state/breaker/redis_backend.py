"""The Redis backend: runs the scripts of `breaker.lua` and reads their replies.

Each method is one round trip (EVALSHA; redis-py's `Script` reloads the script after NOSCRIPT,
for example after a Redis restart).
"""

from __future__ import annotations

import functools
from typing import Any

import redis
from redis.commands.core import Script

from recovery.state import lua
from recovery.state.breaker.types import (
    Grant,
    Limits,
    Outcome,
    RawSnapshot,
    State,
    Transition,
    utc_from_ms,
)
from recovery.state.scripts import ScriptCall

_SECTION_MARK = "--@@ "


@functools.cache
def script_sources() -> dict[str, str]:
    """The scripts of breaker.lua by name, each with the "common" section in front."""
    text = lua.load("breaker")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(_SECTION_MARK):
            current = sections.setdefault(line[len(_SECTION_MARK):].strip(), [])
        elif current is not None:
            current.append(line)
    common = "\n".join(sections.pop("common", []))
    return {name: f"{common}\n{chr(10).join(body)}\n" for name, body in sections.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _transition(reply: list[Any], start: int) -> Transition | None:
    if len(reply) <= start:
        return None
    return Transition(
        _text(reply[start]), _text(reply[start + 1]), _text(reply[start + 2]),
        utc_from_ms(int(reply[start + 3])),
    )


def _state(value: Any) -> State:
    text = _text(value)
    if text == "open":
        return "open"
    if text == "half_open":
        return "half_open"
    return "closed"


class RedisBackend:
    """One breaker's state in a Redis hash, shared by every process on every host."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.key = key
        self._sources = sources = script_sources()
        self._acquire: Script = client.register_script(sources["acquire"])
        self._record: Script = client.register_script(sources["record"])
        self._force: Script = client.register_script(sources["force"])
        self._snapshot: Script = client.register_script(sources["snapshot"])

    def acquire_call(self, limits: Limits, token: str) -> ScriptCall:
        """The script run of `acquire`; its reply goes to `grant`."""
        return ScriptCall(self._sources["acquire"], [self.key],
                          [token, limits.lease_ms, limits.max_probes, limits.reset_ms,
                           limits.ttl_ms])

    @staticmethod
    def grant(reply: Any) -> Grant:
        granted, probe, epoch, wait_ms = (int(v) for v in reply[:4])
        return Grant(
            bool(granted), bool(probe), epoch, wait_ms / 1000, _state(reply[4]),
            _transition(reply, 5),
        )

    def acquire(self, limits: Limits, token: str) -> Grant:
        call = self.acquire_call(limits, token)
        return self.grant(self._acquire(keys=call.keys, args=call.args))

    def record_call(self, limits: Limits, epoch: int | None, token: str,
                    outcome: Outcome) -> ScriptCall:
        """The script run of `record`; its reply goes to `transition`."""
        if epoch is None:
            raise ValueError("A Redis breaker record needs the epoch its permit was granted in.")
        rate = -1.0 if limits.failure_rate is None else limits.failure_rate
        return ScriptCall(self._sources["record"], [self.key], [
            epoch, token, outcome, limits.threshold, repr(rate), limits.minimum_calls,
            limits.window_ms, limits.reset_ms, limits.success_threshold, limits.ttl_ms,
            repr(limits.reset_factor), limits.max_reset_ms,
        ])

    @staticmethod
    def transition(reply: Any) -> Transition | None:
        return _transition(reply, 1)

    def record(
        self, limits: Limits, epoch: int | None, token: str, outcome: Outcome
    ) -> Transition | None:
        call = self.record_call(limits, epoch, token, outcome)
        return self.transition(self._record(keys=call.keys, args=call.args))

    def force(self, limits: Limits, action: str, open_ms: int, reason: str) -> Transition | None:
        reply = self._force(keys=[self.key], args=[action, open_ms, limits.ttl_ms, reason])
        return _transition(reply, 1)

    def snapshot(self, limits: Limits) -> RawSnapshot:
        reply = self._snapshot(keys=[self.key], args=[limits.window_ms])
        state = _state(reply[0])
        failures, opened_at, open_until, probes, calls, fails, now, failed_probes = (
            int(v) for v in reply[1:])
        return RawSnapshot(
            state=state,
            consecutive_failures=failures,
            opened_at_ms=opened_at if opened_at >= 0 else None,
            open_until_ms=open_until if open_until >= 0 else None,
            probes_in_flight=probes,
            window_calls=calls,
            window_failures=fails,
            now_ms=now,
            failed_probes=failed_probes,
        )
