"""What the dead-letter queue needs from the process: a structural type the engine's `Runtime`
satisfies, so the DLQ (below the engine) never imports it."""

from __future__ import annotations

from typing import Protocol

import redis

from recovery.audit.writer import AuditWriter
from recovery.config.registry import Integration, Registry
from recovery.config.settings import Settings
from recovery.state.breaker import ClusterBreaker


class DlqRuntime(Protocol):
    """Settings, integrations, the Redis client (None: in-process only), the audit writer and
    the breakers (a replay pauses while an integration's breaker is open)."""

    settings: Settings
    registry: Registry
    redis: redis.Redis | None
    audit: AuditWriter

    def breaker(self, integration: Integration, *, scope: str = "") -> ClusterBreaker: ...
