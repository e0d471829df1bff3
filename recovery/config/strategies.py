"""The `strategies:` block of an integration: recovery strategies as configuration.

    strategies:
      rate_limit: {attempts: 5, initial_delay_ms: 5000, factor: 3, fallbacks: [cache]}
      server_error: {breaker: true, fallbacks: [api]}
      authentication: {attempts: 2, refresh_token: true, alert: true}
      unknown: {dead_letter: true}
      409: {retry: true, attempts: 3}

A key is an error category or an HTTP status (400-599, which wins over its category). Each
block is a `StrategyBlock`; a key it leaves out keeps the default table's value
(`recovery.core.strategies.DEFAULT_TABLE`). Everything is checked at load: an unknown
category, key ("action") or fallback is refused with the file, the integration and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from recovery.config.settings import MAX_MS
from recovery.config.yamlconfig import Section, show_value

#: `recovery.core.errors.ErrorCategory`'s values (config sits below the taxonomy; a test keeps
#: the two lists equal).
CATEGORY_NAMES = ("network", "authentication", "rate_limit", "server_error", "client_error",
                  "response_too_large", "transient", "unknown")
#: Failures no fallback may repair (`recovery.core.errors.UNREPAIRABLE_CATEGORIES`).
UNREPAIRABLE = ("client_error", "response_too_large")
#: In a `fallbacks` list: the integration's fallbacks not named before it, in priority order.
OTHERS = "others"
STATUS_RANGE = (400, 599)
BLOCK_KEYS = ("name", "attempts", "initial_delay_ms", "factor", "max_delay_ms", "jitter",
              "retry", "breaker", "fallbacks", "alert", "refresh_token", "dead_letter")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_REFRESHABLE = ("authentication", "401", "403")


@dataclass(frozen=True)
class StrategyBlock:
    """One strategy as configured; None everywhere means "as the table below says".

    `attempts` counts calls, the first one included (for authentication: the call and its
    token refreshes within one delivery). Delays grow as initial_delay_ms * factor ** (n - 1)
    up to max_delay_ms. `retry` overrides whether the failure is retried at all (by default
    its class decides); `breaker` whether it counts toward the circuit breaker; `fallbacks`
    which fallback types may serve, in order; `alert` raises an alert when the strategy gives
    up; `dead_letter` sends the job to the dead-letter queue at once.
    """

    name: str | None = None
    attempts: int | None = None
    initial_delay_ms: int | None = None
    factor: float | None = None
    max_delay_ms: int | None = None
    jitter: float | None = None
    retry: bool | None = None
    breaker: bool | None = None
    fallbacks: tuple[str, ...] | None = None
    alert: bool | None = None
    refresh_token: bool | None = None
    dead_letter: bool | None = None

    def over(self, base: StrategyBlock) -> StrategyBlock:
        """`base` with every value this block sets replacing its own."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)
                   if getattr(self, f.name) is not None}
        return replace(base, **changes)


def strategy_key(raw: Any) -> str | None:
    """A block's key as stored ("rate_limit", "503"), or None when it is neither a category
    nor an error status."""
    if isinstance(raw, str) and raw in CATEGORY_NAMES:
        return raw
    text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if isinstance(text, str) and text.isdigit() and len(text) == 3:
        low, high = STATUS_RANGE
        if low <= int(text) <= high:
            return text
    return None


def _optional_whole(s: Section, key: str, minimum: int, maximum: int,
                    unit: str = "") -> int | None:
    return None if s.get(key) is None else s.whole(key, minimum, minimum, maximum, unit)


def _optional_flag(s: Section, key: str) -> bool | None:
    return None if s.get(key) is None else s.flag(key, False)


def _fallbacks(s: Section, key: str, configured: tuple[str, ...],
               types: tuple[str, ...]) -> tuple[str, ...] | None:
    value = s.get("fallbacks")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        s.fail("fallbacks", f"must be a list of fallback types such as [api, cache], got "
                            f"{show_value(value)}")
    if value and key in UNREPAIRABLE:
        s.fail("fallbacks", f"cannot name fallbacks for {key.replace('_', ' ')}s: the "
                            "request itself is wrong, and a stand-in answer would hide it; "
                            "use an empty list or remove the key")
    for name in value:
        if name not in (*types, OTHERS):
            s.fail("fallbacks", f"names {name!r}, which is not a fallback type; use some of "
                                f"{', '.join(types)} (and {OTHERS} for the rest in priority "
                                "order)")
        if name != OTHERS and name not in configured:
            s.fail("fallbacks", f"names {name!r}, but the integration has no {name} "
                                "fallback; add one under 'fallbacks' or remove it here")
    if len(set(value)) != len(value):
        s.fail("fallbacks", f"names a fallback twice in {show_value(value)}")
    return tuple(value)


def _check(s: Section, key: str, block: StrategyBlock, visibility_s: int) -> None:
    """Refuse a block whose keys contradict each other or could not be honoured."""
    if block.dead_letter:
        clash = [name for name, on in (("attempts", (block.attempts or 1) > 1),
                                       ("retry", bool(block.retry)),
                                       ("fallbacks", bool(block.fallbacks)),
                                       ("refresh_token", bool(block.refresh_token))) if on]
        if clash:
            s.fail("dead_letter", f"sends the job straight to the dead-letter queue, which "
                                  f"contradicts '{clash[0]}' in the same block; remove one")
    if block.refresh_token and key not in _REFRESHABLE:
        s.fail("refresh_token", f"applies to authentication failures only (authentication, "
                                f"401 or 403), not to {key!r}")
    for name in ("initial_delay_ms", "max_delay_ms"):
        millis = getattr(block, name)
        if millis is not None and millis / 1000 >= visibility_s:
            s.fail(name, f"is {millis} ms, which is not below REDIS_VISIBILITY_TIMEOUT "
                         f"({visibility_s} s): Redis would redeliver a job waiting that long "
                         "and it would run twice; lower it")


def parse_block(s: Section, key: str, configured: tuple[str, ...], types: tuple[str, ...],
                visibility_s: int) -> StrategyBlock:
    name = s.optional_text("name")
    if name is not None and not _NAME.fullmatch(name):
        s.fail("name", f"must be 1 to 40 lowercase letters, digits or '-', such as "
                       f"'payments-backoff', got {show_value(name)}")
    block = StrategyBlock(
        name=name,
        attempts=_optional_whole(s, "attempts", 1, 100),
        initial_delay_ms=_optional_whole(s, "initial_delay_ms", 0, MAX_MS, "ms"),
        factor=None if s.get("factor") is None else s.number("factor", 1.0, 1.0, 100.0),
        max_delay_ms=_optional_whole(s, "max_delay_ms", 1, MAX_MS, "ms"),
        jitter=None if s.get("jitter") is None else s.fraction_or_flag("jitter", 0.2),
        retry=_optional_flag(s, "retry"), breaker=_optional_flag(s, "breaker"),
        fallbacks=_fallbacks(s, key, configured, types), alert=_optional_flag(s, "alert"),
        refresh_token=_optional_flag(s, "refresh_token"),
        dead_letter=_optional_flag(s, "dead_letter"))
    _check(s, key, block, visibility_s)
    return block


def parse_strategies(s: Section, configured: tuple[str, ...], types: tuple[str, ...],
                     visibility_s: int) -> dict[str, StrategyBlock]:
    """The integration's `strategies` mapping; `configured` are its fallbacks' types."""
    value = s.get("strategies")
    if value is None:
        return {}
    if not isinstance(value, dict):
        s.fail("strategies", f"must be a mapping of error categories to strategies, got "
                             f"{show_value(value)}")
    blocks: dict[str, StrategyBlock] = {}
    keys: dict[Any, str] = {}
    for raw in value:
        key = strategy_key(raw)
        if key is None:
            s.fail(f"strategies.{raw}", f"is not an error category or HTTP error status; use "
                                        f"one of {', '.join(CATEGORY_NAMES)}, or a status "
                                        f"from {STATUS_RANGE[0]} to {STATUS_RANGE[1]}")
        if key in keys.values():
            s.fail(f"strategies.{raw}", "is given twice (as a number and as a string)")
        keys[raw] = key
    table = s.section("strategies", list(value))
    assert table is not None
    for raw, key in keys.items():
        child = table.section(raw, BLOCK_KEYS) or table.empty(str(raw))
        blocks[key] = parse_block(child, key, configured, types, visibility_s)
    return blocks
