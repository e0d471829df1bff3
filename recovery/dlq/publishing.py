"""Publishing a message to a DLQ-side queue (the DLQ itself, the quarantine)."""

from __future__ import annotations

from typing import Any

from recovery.config.broker import push_dead_letter
from recovery.config.settings import get_settings
from recovery.state.connection import shared_client


def publish_message(message: dict[str, Any], queue_name: str) -> None:
    """Publish one JSON message to a DLQ-side queue; raises when Redis does not take it.
    These are lists in the state store's Redis on any broker (`recovery.config.broker`),
    written through this process's state-store client."""
    settings = get_settings()
    push_dead_letter(shared_client(settings.redis_url), settings, queue_name, message)
