"""The console's one door to rate-limit pauses: read the pause left, lift a pause.

Today's limiter (recovery.state.ratelimit) offers `paused_for` and `usage` but no way to lift a
pause;
a limiter with `resume(integration_id)` (issue 12's `recovery-cli ratelimit resume`) is used as
soon as it exists. Until then `resume` clears the shared "not before" time the limiter keeps.
"""

from __future__ import annotations

from typing import Any

from recovery.engine.runtime import Runtime
from recovery.state.connection import integration_tag
from recovery.state.ratelimit import RateLimitUsage


def usage(rt: Runtime, integration: Any) -> RateLimitUsage:
    """Requests in the current window and the pause left, as every worker sees them."""
    return rt.limiter.usage(integration.id, integration.rate_limit)


def resume(rt: Runtime, integration_id: str) -> float:
    """Lift the integration's pause now; returns the seconds that were left on it."""
    limiter: Any = rt.limiter
    if hasattr(limiter, "resume"):
        return float(limiter.resume(integration_id))
    left = float(limiter.paused_for(integration_id))
    if rt.redis is not None:
        tag = integration_tag(rt.redis, integration_id)
        rt.redis.delete(f"{rt.settings.redis_key_prefix}ratelimit:{tag}:not_before")
    local = getattr(limiter, "_local", None)
    if local is not None:
        local._not_before.pop(integration_id, None)
    return left
