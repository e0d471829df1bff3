"""Several of our Lua scripts in one round trip.

Each component (idempotency, rate limit, breaker, retry budget) owns a script and can describe
one run of it as a `ScriptCall`. `combine` wraps each source, unchanged, as a Lua function of
`(KEYS, ARGV)`, so inside it `KEYS` and `ARGV` are that step's own, and appends a driver that
calls the steps in order and decides when to stop. The combined script runs atomically, like
each of its parts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

ScriptArg = str | int | float


@dataclass(frozen=True)
class ScriptCall:
    """One run of a component's script: its source, keys and arguments."""

    source: str
    keys: list[str]
    args: list[ScriptArg]


def combine(steps: Mapping[str, str], driver: str) -> str:
    """One script: each source in `steps` as `local function <name>(KEYS, ARGV)`, then `driver`.

    The driver reads its own KEYS and ARGV; `slice(t, from, count)` copies part of either.
    """
    parts = ["local function slice(t, from, count)\n"
             "    local out = {}\n"
             "    for i = 1, count do out[i] = t[from + i - 1] end\n"
             "    return out\n"
             "end\n"]
    for name, source in steps.items():
        parts.append(f"local function {name}(KEYS, ARGV)\n{source}\nend\n")
    parts.append(driver)
    return "\n".join(parts)


class ScriptCache:
    """Registered scripts of one Redis client, by name (redis-py reloads them after NOSCRIPT)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()

    def run(self, name: str, source: Callable[[], str], keys: list[str],
            args: list[ScriptArg]) -> Any:
        """Run the script `name`, built by `source()` the first time it is needed."""
        with self._lock:
            script = self._scripts.get(name)
            if script is None:
                script = self._scripts[name] = self._client.register_script(source())
        return script(keys=keys, args=args)
