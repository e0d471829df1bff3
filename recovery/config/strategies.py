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
category, key ("action") or fallback is refused with the file, the integration and the key:
the model `StrategyModel` checks each key, `build_strategies` what depends on the integration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Annotated, Any

from recovery.config.file_errors import Where
from recovery.config.file_types import (
    Bool,
    FileModel,
    FractionOrFlag,
    Names,
    Number,
    Pattern,
    Rule,
    Whole,
    refuse,
)
from recovery.config.settings import MAX_MS
from recovery.config.yamlconfig import show_value

#: `recovery.core.errors.ErrorCategory`'s values (config sits below the taxonomy; a test keeps
#: the two lists equal).
CATEGORY_NAMES = ("network", "authentication", "rate_limit", "server_error", "client_error",
                  "response_too_large", "transient", "unknown")
#: Failures no fallback may repair (`recovery.core.errors.UNREPAIRABLE_CATEGORIES`).
UNREPAIRABLE = ("client_error", "response_too_large")
#: In a `fallbacks` list: the integration's fallbacks not named before it, in priority order.
OTHERS = "others"
STATUS_RANGE = (400, 599)
#: The kinds of fallback an integration may have (the registry builds on this module).
FALLBACK_TYPES = ("api", "cache", "default", "degraded")
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


class StrategyTable(Rule):
    """The `strategies` mapping: keys are categories or error statuses, stored as strings."""

    def check(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            refuse(f"must be a mapping of error categories to strategies, got "
                   f"{show_value(value)}")
        table: dict[str, Any] = {}
        for raw, block in value.items():
            key = strategy_key(raw)
            if key is None:
                refuse(f"is not an error category or HTTP error status; use one of "
                       f"{', '.join(CATEGORY_NAMES)}, or a status from {STATUS_RANGE[0]} to "
                       f"{STATUS_RANGE[1]}", at=str(raw))
            if key in table:
                refuse("is given twice (as a number and as a string)", at=str(raw))
            table[key] = {} if block is None else block
        return table

    def schema(self) -> dict[str, Any]:
        return {"propertyNames": {"anyOf": [{"enum": list(CATEGORY_NAMES)},
                                            {"pattern": "^[45][0-9][0-9]$"}]}}


class StrategyFallbacks(Rule):
    """Fallback types (and `others`) in the order they may serve, each once."""

    def check(self, value: Any) -> list[str]:
        names = Names("a list of fallback types such as [api, cache]").check(value)
        for name in names:
            if name not in (*FALLBACK_TYPES, OTHERS):
                refuse(f"names {name!r}, which is not a fallback type; use some of "
                       f"{', '.join(FALLBACK_TYPES)} (and {OTHERS} for the rest in priority "
                       "order)")
        if len(set(names)) != len(names):
            refuse(f"names a fallback twice in {show_value(names)}")
        return names

    def schema(self) -> dict[str, Any]:
        return {"items": {"enum": [*FALLBACK_TYPES, OTHERS]}, "uniqueItems": True}


class StrategyModel(FileModel):
    """One strategy: the keys it sets replace the default table's (see `StrategyBlock`)."""

    name: Annotated[str, Pattern(_NAME, "must be 1 to 40 lowercase letters, digits or '-', "
                                        "such as 'payments-backoff'")] | None = None
    """Shown in the audit trail and by `recovery-cli strategies`."""
    attempts: Annotated[int, Whole(1, 100)] | None = None
    """Calls in all, the first one included."""
    initial_delay_ms: Annotated[int, Whole(0, MAX_MS, "ms")] | None = None
    factor: Annotated[float, Number(1.0, 100.0)] | None = None
    """Each delay is the previous one times this."""
    max_delay_ms: Annotated[int, Whole(1, MAX_MS, "ms")] | None = None
    jitter: Annotated[float, FractionOrFlag(0.2)] | None = None
    """Fraction 0..1 of each delay that is randomised; true means 0.2."""
    retry: Bool | None = None
    """Whether the failure is retried at all (default: its class decides)."""
    breaker: Bool | None = None
    """Whether the failure counts toward the circuit breaker."""
    fallbacks: Annotated[list[str], StrategyFallbacks()] | None = None
    """Which fallback types may serve, in order; `others` for the rest by priority."""
    alert: Bool | None = None
    """Raise an alert when the strategy gives up."""
    refresh_token: Bool | None = None
    """Refresh the OAuth token before the next call (authentication failures only)."""
    dead_letter: Bool | None = None
    """Send the job to the dead-letter queue at once."""


def _check(where: Where, key: str, block: StrategyBlock, configured: tuple[str, ...],
           visibility_s: int) -> None:
    """Refuse a block whose keys contradict each other, the integration or the broker."""
    if block.fallbacks and key in UNREPAIRABLE:
        where.fail("fallbacks", f"cannot name fallbacks for {key.replace('_', ' ')}s: the "
                                "request itself is wrong, and a stand-in answer would hide it; "
                                "use an empty list or remove the key")
    for name in block.fallbacks or ():
        if name != OTHERS and name not in configured:
            where.fail("fallbacks", f"names {name!r}, but the integration has no {name} "
                                    "fallback; add one under 'fallbacks' or remove it here")
    if block.dead_letter:
        clash = [name for name, on in (("attempts", (block.attempts or 1) > 1),
                                       ("retry", bool(block.retry)),
                                       ("fallbacks", bool(block.fallbacks)),
                                       ("refresh_token", bool(block.refresh_token))) if on]
        if clash:
            where.fail("dead_letter", f"sends the job straight to the dead-letter queue, "
                                      f"which contradicts '{clash[0]}' in the same block; "
                                      "remove one")
    if block.refresh_token and key not in _REFRESHABLE:
        where.fail("refresh_token", f"applies to authentication failures only "
                                    f"(authentication, 401 or 403), not to {key!r}")
    for name in ("initial_delay_ms", "max_delay_ms"):
        millis = getattr(block, name)
        if millis is not None and millis / 1000 >= visibility_s:
            where.fail(name, f"is {millis} ms, which is not below REDIS_VISIBILITY_TIMEOUT "
                             f"({visibility_s} s): Redis would redeliver a job waiting that "
                             "long and it would run twice; lower it")


def build_strategies(table: Mapping[str, StrategyModel] | None, where: Where,
                     configured: tuple[str, ...],
                     visibility_s: int) -> dict[str, StrategyBlock]:
    """The validated `strategies` table as blocks; `configured` are the integration's
    fallback types. `where` names the integration."""
    blocks: dict[str, StrategyBlock] = {}
    for key, model in (table or {}).items():
        values = model.model_dump()
        if values["fallbacks"] is not None:
            values["fallbacks"] = tuple(values["fallbacks"])
        block = StrategyBlock(**values)
        _check(where.below(f"strategies.{key}"), key, block, configured, visibility_s)
        blocks[key] = block
    return blocks
