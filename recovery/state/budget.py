"""A cluster-wide retry budget per integration: retries may not outgrow first attempts.

Backoff spaces one job's retries; it does nothing about a thousand jobs that all failed in the
same second. The budget bounds them together: in a sliding window (default 10 s), the retries
scheduled for an integration may not exceed `ratio` (default 20%) of the first attempts made in
the same window, plus a small `floor` (default 3) so that a quiet integration can still retry.
A retry is charged when it is scheduled, not when its countdown fires, so retries waiting in
countdown cannot flood a recovering dependency together. A retry over budget is deferred
without spending an attempt (see `try_charge_retry`).

The window is ten slots of `window_ms / 10`: an event counts for between 9/10 of the window and
the whole window, and the state per integration is two small Redis hashes however busy it is.
Every decision is one Lua script (`budget.lua`) on the Redis server's clock. Without Redis, or
while it is unreachable, an in-process budget with the same rules stands in.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypedDict, TypeVar

import redis
import structlog
from redis.commands.core import Script

from recovery.config.budget import (
    DEFAULT_RETRY_BUDGET,
    RetryBudgetConfig,
)
from recovery.state import lua
from recovery.state.connection import integration_tag
from recovery.state.ratelimit import RedisOutage
from recovery.state.scripts import ScriptCall

log = structlog.get_logger(__name__)

T = TypeVar("T")

Op = Literal["note", "charge", "usage"]


class BudgetUsage(TypedDict):
    first_attempts: int
    retries: int
    allowed: int
    window_ms: int


def wait_for_room_ms(
    firsts: dict[float, int], retries: dict[float, int], now_ms: float, config: RetryBudgetConfig
) -> float:
    """Milliseconds until one more retry fits, if nothing else is recorded meanwhile.

    Both maps hold live slots only (slot start -> count). Room can only appear when a retry
    slot leaves the window, so those are the moments checked, each with the first attempts
    still in the window then. With no room even after every retry left (floor 0), try again
    after a whole window: new first attempts may have come by then.
    """
    left = sum(retries.values())
    for start in sorted(retries):
        left -= retries[start]
        remaining_firsts = sum(count for slot, count in firsts.items() if slot > start)
        if left + 1 <= config.allowance(remaining_firsts):
            return max(start + config.window_ms - now_ms, 1.0)
    return float(config.window_ms)


def spread_deferral(
    wait_s: float, config: RetryBudgetConfig, rng: random.Random | None = None
) -> float:
    """How long to defer a retry the budget refused: its wait plus up to one window of jitter.

    Every retry refused before the same slot leaves the window learns the same wait. Deferring
    them all by exactly that long would bring them back together to compete for the few retries
    that slot frees, and defer nearly all of them again, one broker round trip each. Spread over
    the next window, they come back while the budget refills.
    """
    window_s = config.window_ms / 1000
    jitter = rng.uniform(0.0, window_s) if rng is not None else random.uniform(0.0, window_s)
    return max(wait_s, 0.0) + jitter


def monotonic_ms() -> float:
    return time.monotonic() * 1000


class LocalRetryBudget:
    """The in-process equivalent of the cluster budget: same rules, one process only."""

    def __init__(self, clock_ms: Callable[[], float] = monotonic_ms) -> None:
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._firsts: dict[str, dict[float, int]] = {}
        self._retries: dict[str, dict[float, int]] = {}

    def note_first_attempt(self, integration_id: str, config: RetryBudgetConfig) -> None:
        with self._lock:
            now = self._clock_ms()
            slots = self._live(self._firsts, integration_id, now, config)
            start = _slot_start(now, config)
            slots[start] = slots.get(start, 0) + 1

    def try_charge_retry(self, integration_id: str, config: RetryBudgetConfig) -> float:
        with self._lock:
            now = self._clock_ms()
            firsts = self._live(self._firsts, integration_id, now, config)
            retries = self._live(self._retries, integration_id, now, config)
            if sum(retries.values()) + 1 <= config.allowance(sum(firsts.values())):
                start = _slot_start(now, config)
                retries[start] = retries.get(start, 0) + 1
                return 0.0
            return wait_for_room_ms(firsts, retries, now, config) / 1000

    def usage(self, integration_id: str, config: RetryBudgetConfig) -> BudgetUsage:
        with self._lock:
            now = self._clock_ms()
            firsts = sum(self._live(self._firsts, integration_id, now, config).values())
            retries = sum(self._live(self._retries, integration_id, now, config).values())
        return BudgetUsage(first_attempts=firsts, retries=retries,
                           allowed=config.allowance(firsts), window_ms=config.window_ms)

    @staticmethod
    def _live(store: dict[str, dict[float, int]], integration_id: str, now: float,
              config: RetryBudgetConfig) -> dict[float, int]:
        """The integration's slots, with the ones that left the window dropped."""
        slots = store.setdefault(integration_id, {})
        for start in [start for start in slots if start <= now - config.window_ms]:
            del slots[start]
        return slots


def _slot_start(now_ms: float, config: RetryBudgetConfig) -> float:
    return float(math.floor(now_ms / config.slot_ms) * config.slot_ms)


class RetryBudget:
    """The retry budget shared by every worker through Redis.

    `redis_client=None` uses the in-process budget throughout. If Redis becomes unreachable the
    budget logs one warning and uses the in-process budget until Redis answers again.
    """

    def __init__(
        self,
        redis_client: redis.Redis | None,
        *,
        key_prefix: str,
        local: LocalRetryBudget | None = None,
    ) -> None:
        self._redis = redis_client
        self._prefix = key_prefix
        self._local = local or LocalRetryBudget()
        self._outage = RedisOutage("retry_budget")
        self._source = lua.load("budget")
        self._script: Script | None = None
        if redis_client is not None:
            self._script = redis_client.register_script(self._source)

    def note_call(self, integration_id: str, config: RetryBudgetConfig) -> ScriptCall | None:
        """The Redis script run of `note_first_attempt`; None when the budget is off."""
        if not config.enabled:
            return None
        return self._call(integration_id, "note", config)

    def charge_call(self, integration_id: str, config: RetryBudgetConfig) -> ScriptCall | None:
        """The Redis script run of `try_charge_retry`, its reply for `charge_wait_s`; None when
        the budget is off."""
        if not config.enabled:
            return None
        return self._call(integration_id, "charge", config)

    @staticmethod
    def charge_wait_s(reply: Any) -> float:
        """The seconds until there is room, from the reply of a charge (0.0: charged)."""
        return float(reply) / 1000

    def note_first_attempt(
        self, integration_id: str, config: RetryBudgetConfig = DEFAULT_RETRY_BUDGET
    ) -> None:
        """Count a first attempt (call it just before attempt 1 reaches the upstream)."""
        if not config.enabled:
            return
        self._with_redis(
            lambda: self._run(integration_id, "note", config),
            lambda: self._local.note_first_attempt(integration_id, config),
        )

    def try_charge_retry(
        self, integration_id: str, config: RetryBudgetConfig = DEFAULT_RETRY_BUDGET
    ) -> float:
        """Charge one retry as it is scheduled: 0.0 when charged, else seconds until there is
        room (nothing is charged then; defer the job and ask again when it comes back)."""
        if not config.enabled:
            return 0.0
        return self._with_redis(
            lambda: self.charge_wait_s(self._run(integration_id, "charge", config)),
            lambda: self._local.try_charge_retry(integration_id, config),
        )

    def usage(
        self, integration_id: str, config: RetryBudgetConfig = DEFAULT_RETRY_BUDGET
    ) -> BudgetUsage:
        """What the window holds right now, for operators and tests; records nothing."""

        def from_redis() -> BudgetUsage:
            firsts, retries, allowed = self._run(integration_id, "usage", config)
            return BudgetUsage(first_attempts=int(firsts), retries=int(retries),
                               allowed=int(allowed), window_ms=config.window_ms)

        return self._with_redis(from_redis, lambda: self._local.usage(integration_id, config))

    def _run(self, integration_id: str, op: Op, config: RetryBudgetConfig,
             now_ms: float | None = None) -> Any:
        """One script call; `now_ms` pins the time (tests), None uses the server's clock."""
        assert self._script is not None
        call = self._call(integration_id, op, config, now_ms)
        return self._script(keys=call.keys, args=call.args)

    def _call(self, integration_id: str, op: Op, config: RetryBudgetConfig,
              now_ms: float | None = None) -> ScriptCall:
        base = f"{self._prefix}budget:{integration_tag(self._redis, integration_id)}"
        at = "" if now_ms is None else repr(now_ms)
        return ScriptCall(self._source, [f"{base}:first", f"{base}:retry"],
                          [op, at, config.window_ms, config.slot_ms, repr(config.ratio),
                           config.floor])

    def _with_redis(self, in_redis: Callable[[], T], in_process: Callable[[], T]) -> T:
        if self._redis is None:
            return in_process()
        return self._outage.run(in_redis, in_process)
