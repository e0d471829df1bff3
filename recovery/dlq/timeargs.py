"""Durations and points in time as operators type them: 90s, 2h, 7d, or an ISO 8601 time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from recovery.core.message import parse_time

MAX_AGE_S = 100 * 366 * 86400

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE_HINT = "use a whole number and a unit, such as 90s, 30m, 2h, 7d or 1w"


def parse_age(text: str) -> timedelta:
    """A duration such as 90s, 30m, 2h, 7d or 1w; ValueError with a sentence otherwise."""
    cleaned = text.strip().lower()
    number, unit = cleaned[:-1], cleaned[-1:]
    if unit not in _UNITS or not number.isascii() or not number.isdigit():
        raise ValueError(f"{text!r} is not a duration; {_AGE_HINT}.")
    if len(number) > 7 or int(number) * _UNITS[unit] > MAX_AGE_S:
        raise ValueError(f"{text!r} is longer than 100 years; {_AGE_HINT}.")
    return timedelta(seconds=int(number) * _UNITS[unit])


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time: an age before `now` (2h, 7d) or an ISO 8601 time (UTC if no zone)."""
    cleaned = text.strip()
    if cleaned[-1:].lower() in _UNITS and cleaned[:-1].isdigit():
        return (now or datetime.now(UTC)) - parse_age(cleaned)
    try:
        if cleaned:
            return parse_time(cleaned)
    except ValueError:
        pass
    raise ValueError(f"{text!r} is neither a duration (2h, 7d) nor an ISO 8601 time "
                     "(2024-05-01T12:00:00Z).")
