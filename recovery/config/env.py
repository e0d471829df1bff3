"""Operational settings read by the ops modules (alerts, health checks, beat lock, metrics).

They live beside `recovery.config.settings` rather than in it so each stays next to the one
module that uses it; the errors are the same `SettingsError` sentences, naming the variable
and the value.

    ALERT_WEBHOOK_URL       optional http(s) URL that receives every alert as a JSON POST
    ALERT_WEBHOOK_TRIES     attempts per alert delivery (default 5)
    HEALTH_CHECK_TRIES      attempts per health check, retried with backoff (default 2)
    BEAT_LOCK_TTL           seconds the single-beat lock lives without renewal (default 60)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from recovery.config.settings import SettingsError, is_http_url, show, shown_base_url

_WHOLE = re.compile(r"\s*[+-]?[0-9]{1,12}\s*")


def env_int(
    name: str, default: int, minimum: int, maximum: int,
    environ: Mapping[str, str] | None = None,
) -> int:
    """A whole number from the environment within [minimum, maximum], else `SettingsError`."""
    text = (os.environ if environ is None else environ).get(name)
    if text is None or not text.strip():
        return default
    if not _WHOLE.fullmatch(text):
        raise SettingsError(f"{name} must be a whole number, got {show(text)}.")
    value = int(text)
    if not minimum <= value <= maximum:
        raise SettingsError(
            f"{name} must be between {minimum} and {maximum}, got {show(text)}."
        )
    return value


def env_url(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """An optional http(s) URL from the environment; unset or empty means None."""
    text = (os.environ if environ is None else environ).get(name, "").strip()
    if not text:
        return None
    if not is_http_url(text):
        raise SettingsError(
            f"{name} must be an http:// or https:// URL with a host, such as "
            f"https://hooks.example.com/alerts, got {shown_base_url(text)}."
        )
    return text
