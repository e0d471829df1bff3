"""What the fault server can be told to do (`recovery.demo.faultserver`): its modes, their
options and scripts, each checked before it takes effect, with an error that says what to send.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

MODES = ("ok", "5xx", "429", "slow", "reset", "auth", "drip", "huge", "down")
STREAMING_MODES = ("drip", "huge")
SCRIPT_WORDS = ("ok", "slow", "reset")
CONTROL_KEYS = ("mode", "status", "retry_after_s", "delay_ms", "token", "for_ms", "script",
                "revoke_tokens", "interval_ms", "drip_bytes", "size_bytes", "declare_length",
                "retry_after")
OPTION_KEYS = ("status", "retry_after_s", "delay_ms", "token", "interval_ms", "drip_bytes",
               "size_bytes", "declare_length", "retry_after")

ScriptItem = int | str


class FaultConfigError(ValueError):
    """A mode, option or script given to the fault server is not valid."""


@dataclass(frozen=True)
class Behaviour:
    """How the server answers API requests when no script entry is pending."""

    mode: str = "ok"
    status: int = 503  # the 5xx mode's status
    retry_after_s: int = 1  # the Retry-After of every 429
    delay_ms: int = 1000  # the slow mode's delay
    token: str | None = None  # the auth mode's accepted bearer token
    interval_ms: int = 200  # the drip mode's pause between bytes
    drip_bytes: int = 300  # the drip mode's body length (60 s at the default interval)
    size_bytes: int = 20 * 1024 * 1024  # the huge mode's body length
    declare_length: bool = False  # huge: send Content-Length instead of chunks
    retry_after: str | None = None  # 429: this Retry-After text as is (an HTTP date, a huge
    #                                  number) instead of retry_after_s


def behaviour_for(mode: str, options: Mapping[str, Any]) -> Behaviour:
    """The behaviour `mode` with `options` over the defaults; FaultConfigError says what was
    wrong."""
    if mode == "down":
        raise FaultConfigError("The mode 'down' takes no response options, only 'for_ms'.")
    if mode not in MODES:
        raise FaultConfigError(f"Unknown fault mode {mode!r}; use one of {', '.join(MODES)}.")
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise FaultConfigError(f"Unknown options {unknown}; use {', '.join(OPTION_KEYS)}.")
    behaviour = replace(Behaviour(mode=mode), **options)
    check_int("status", behaviour.status, 400, 599)
    check_int("retry_after_s", behaviour.retry_after_s, 0, 86_400)
    check_int("delay_ms", behaviour.delay_ms, 0, 600_000)
    check_int("interval_ms", behaviour.interval_ms, 1, 60_000)
    check_int("drip_bytes", behaviour.drip_bytes, 2, 1_000_000)
    check_int("size_bytes", behaviour.size_bytes, 2, 1024 ** 3)
    if behaviour.retry_after is not None and (
            not isinstance(behaviour.retry_after, str) or not behaviour.retry_after.isprintable()
            or not behaviour.retry_after.strip()):
        raise FaultConfigError("'retry_after' must be a non-empty line of text, e.g. "
                               "'Wed, 21 Oct 2125 07:28:00 GMT'.")
    if not isinstance(behaviour.declare_length, bool):
        raise FaultConfigError("'declare_length' must be true or false.")
    if behaviour.token is not None and (not isinstance(behaviour.token, str)
                                        or not behaviour.token.strip()):
        raise FaultConfigError("'token' must be a non-empty string.")
    return behaviour


def checked_script(items: Sequence[ScriptItem]) -> list[ScriptItem]:
    """`items` as a script, each a status 200-599 or one of SCRIPT_WORDS."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise FaultConfigError("'script' must be a list such as [503, 503, 200].")
    for item in items:
        if isinstance(item, str):
            if item not in SCRIPT_WORDS:
                raise FaultConfigError(
                    f"Script entry {item!r} is not valid; use a status or one of {SCRIPT_WORDS}."
                )
        else:
            check_int("a script status", item, 200, 599)
    return list(items)


def check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultConfigError(f"{name} must be a whole number {low}-{high}, got {value!r}.")
