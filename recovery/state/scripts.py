"""Several of our Lua scripts in one round trip.

Each component (idempotency, rate limit, breaker, retry budget) owns a script and can describe
one run of it as a `ScriptCall`. `combine` wraps each source, unchanged, as a Lua function of
`(KEYS, ARGV)`, so inside it `KEYS` and `ARGV` are that step's own, and appends a driver that
calls the steps in order and decides when to stop. `run_chain` does so with the one driver
(`lua/chain.lua`): the steps in the order given, up to the first whose reply fails its `go_on`
test. The combined script runs atomically, like each of its parts.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis
from hiredis import pack_command
from redis.connection import AbstractConnection
from redis.exceptions import NoScriptError

from recovery.state import lua
from recovery.state.connection import is_cluster

ScriptArg = str | int | float


@dataclass(frozen=True)
class ScriptCall:
    """One run of a component's script: its source, keys and arguments, and what to do with
    its reply when it ran as a step of a combined script (`on_reply`, optional)."""

    source: str
    keys: list[str]
    args: list[ScriptArg]
    on_reply: Callable[[Any], None] | None = field(default=None, compare=False)


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


class Link(NamedTuple):
    """One step of a chain: its function's name in the combined script (one name, one source
    and one test, in every chain: the script is known by its steps' names), its run, and the
    test of its reply that lets the chain go on (`go_on` in `lua/chain.lua`: any, zero,
    granted, claimed), with that test's argument."""

    name: str
    call: ScriptCall
    go_on: str = "any"
    test_arg: ScriptArg = ""


def run_chain(scripts: ScriptCache, label: str, links: Sequence[Link]) -> list[Any]:
    """Run `links` in order as one script, stopping after the first whose reply fails its
    test; the replies of the steps that ran (a step's nil reply is None)."""
    keys: list[str] = []
    args: list[ScriptArg] = []
    step_args: list[ScriptArg] = []
    for link in links:
        keys += link.call.keys
        args += (len(link.call.keys), len(link.call.args), link.test_arg)
        step_args += link.call.args
    args += step_args
    name = f"{label}:{','.join([link.name for link in links])}"
    replies: list[Any] = scripts.run(name, lambda: _chain_source(links), keys, args)
    return replies


def _chain_source(links: Sequence[Link]) -> str:
    steps = ", ".join(f"{{ {link.name}, '{link.go_on}' }}" for link in links)
    return combine({link.name: link.call.source for link in links},
                   lua.render("chain", steps=f"{{ {steps} }}"))


class ScriptCache:
    """Scripts by name, run over connections of their own rather than through the client.

    These scripts are every job's hot path (two per delivery). Sent through `redis.Redis`, each
    call also pays for the pool, the retry wrapper and the instrumentation hooks: about 70 us
    of CPU on top of the 40 us the call itself costs. So each thread gets one connection, made
    the way the client's pool makes its own (same address, timeouts and decoding). A command
    that fails with a connection error is sent once more on a fresh connection, as the client
    itself would (a Redis restart leaves a stale socket); a timeout is raised at once, since
    the script may have run. A script Redis does not know (restarted, SCRIPT FLUSH) is loaded
    and run again.
    """

    def __init__(self, client: redis.Redis) -> None:
        # A Redis Cluster client routes each script to the node of its keys' slot (and refuses
        # keys of several slots); it has no single pool to take connections from.
        self._cluster = client if is_cluster(client) else None
        self._scripts: dict[str, tuple[str, bytes]] = {}  # name -> (sha1, source)
        self._local = threading.local()
        self._opened: list[AbstractConnection] = []
        self._lock = threading.Lock()
        if self._cluster is None:
            pool = client.connection_pool
            self._connect = lambda: pool.connection_class(**pool.connection_kwargs)

    def run(self, name: str, source: Callable[[], str], keys: list[str],
            args: list[ScriptArg]) -> Any:
        """Run the script `name`, built by `source()` the first time it is needed."""
        script = self._scripts.get(name)
        if script is None:
            text = source().encode()
            script = self._scripts[name] = (hashlib.sha1(text).hexdigest(), text)
        if self._cluster is not None:
            return _run_on_cluster(self._cluster, script, keys, args)
        command = ("EVALSHA", script[0], len(keys), *keys, *args)
        try:
            return self._send(command)
        except NoScriptError:
            self._send(("SCRIPT", "LOAD", script[1]))
            return self._send(command)

    def close(self) -> None:
        """Close every connection this cache opened (each thread's)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.disconnect()

    def _send(self, command: tuple[ScriptArg | bytes, ...]) -> Any:
        # Our arguments are plain str, bytes and numbers (the stub types a 1-tuple only).
        packed = [pack_command(command)]  # type: ignore[arg-type]
        connection = self._connection()
        try:
            _connect(connection)
            connection.send_packed_command(packed, check_health=False)
            return connection.read_response()
        except redis.ConnectionError:
            connection.disconnect()
        _connect(connection)
        connection.send_packed_command(packed, check_health=False)
        return connection.read_response()

    def _connection(self) -> AbstractConnection:
        connection: AbstractConnection | None = getattr(self._local, "connection", None)
        if connection is None or getattr(self._local, "pid", None) != os.getpid():
            connection = self._local.connection = self._connect()
            self._local.pid = os.getpid()
            with self._lock:
                self._opened.append(connection)
        return connection


def _connect(connection: AbstractConnection) -> None:
    """Open the connection through its own `connect`, as the client's pool does: a Sentinel
    connection asks the Sentinels for the master there (a bare send would open a socket to the
    connection's default address, localhost:6379, instead)."""
    if not connection.is_connected:
        connection.connect()


def _run_on_cluster(client: redis.Redis, script: tuple[str, bytes], keys: list[str],
                    args: list[ScriptArg]) -> Any:
    """EVALSHA through the cluster client (which checks that the keys share a slot); a script
    the node does not know is loaded on every primary and run again."""
    try:
        return client.evalsha(script[0], len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script[1])
        return client.evalsha(script[0], len(keys), *keys, *args)
