"""Manual control of the shared state, for the CLI and the console alike: open or close a
breaker, lift a rate-limit pause. Each action changes what every worker sees and writes one
`alerts` row saying why and who (`details`), so the two front ends cannot drift apart."""

from __future__ import annotations

from typing import Any

from recovery.engine.runtime import Runtime

BREAKER_ACTIONS = ("open", "close")


def steer_breaker(rt: Runtime, integration_id: str, action: str, why: str,
                  details: dict[str, Any]) -> str:
    """Force an integration's breaker open or closed; returns its state afterwards.

    Raises UnknownIntegrationError (from the registry) or ValueError for another action.
    """
    if action not in BREAKER_ACTIONS:
        raise ValueError(f"Unknown breaker action {action!r}; use open or close.")
    target = rt.breaker(rt.registry.get(integration_id))
    if action == "open":
        target.force_open(why)
    else:
        target.force_close(why)
    rt.audit.alert(f"breaker_manual_{action}", integration_id, why, details)
    return target.snapshot().state


def resume_rate_limit(rt: Runtime, integration_id: str, why: str,
                      details: dict[str, Any]) -> float:
    """Lift an integration's Retry-After pause for every worker; returns the seconds that
    were left on it (0 when it was not paused: the action is recorded anyway)."""
    rt.registry.get(integration_id)
    left_s = float(rt.limiter.resume(integration_id))
    rt.audit.alert("ratelimit_manual_resume", integration_id, why,
                   {**details, "pause_left_s": round(left_s, 3)})
    return left_s
