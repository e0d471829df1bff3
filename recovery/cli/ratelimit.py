"""`recovery-cli ratelimit`: see the cluster's rate-limit windows and pauses, and lift a pause.

A 429 or 503 with Retry-After pauses an integration for every worker (capped at
RETRY_AFTER_MAX). `status` shows each integration's window and any pause with its reason;
`resume` lifts a pause by hand and writes the same audit alert as `breaker open|close`.
"""

from __future__ import annotations

from typing import Any

import click

from recovery.cli.common import Row, act_on_integration, show_per_integration
from recovery.config.registry import Integration
from recovery.ops.steering import resume_rate_limit


def _usage_dict(runtime: Any, integration: Integration) -> Row:
    usage = runtime.limiter.usage(integration.id, integration.rate_limit)
    paused = round(float(usage["paused_for_s"]), 3)
    return {
        "integration": integration.id,
        "window_used": int(usage["used"]),
        "window_limit": int(usage["limit"]),
        "window_ms": int(usage["window_ms"]),
        "paused_for_s": paused,
        "pause_reason": usage["pause_reason"] if paused > 0 else None,
        "shared": bool(runtime.limiter.shared),
    }


@click.group()
def ratelimit() -> None:
    """Rate-limit windows and Retry-After pauses per integration, and manual resume."""


@ratelimit.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
def ratelimit_status(as_json: bool) -> None:
    """Window use, pause left and the pause's reason for every integration.

    \b
    Example:
      recovery-cli ratelimit status --json
    """
    show_per_integration(_usage_dict, _status_line, as_json)


def _status_line(row: Row) -> str:
    pause = (f"paused {row['paused_for_s']:.1f} s ({row['pause_reason'] or 'no reason'})"
             if row["paused_for_s"] > 0 else "not paused")
    return (f"{row['integration']:<20} window={row['window_used']}/"
            f"{row['window_limit']} per {row['window_ms']} ms  {pause}")


@ratelimit.command("resume")
@click.argument("integration")
@click.option("--reason", help="Why, for the audit trail.")
def ratelimit_resume(integration: str, reason: str | None) -> None:
    """Lift an integration's Retry-After pause for every worker (audited).

    \b
    Example:
      recovery-cli ratelimit resume payments --reason "vendor confirmed the outage is over"
    """
    left_s = act_on_integration(
        lambda runtime, name, why: resume_rate_limit(runtime, name, why, {}),
        integration, reason or "operator resume from recovery-cli")
    if left_s > 0:
        click.echo(f"Rate-limit pause for {integration!r} lifted ({left_s:.1f} s were left).")
    else:
        click.echo(f"{integration!r} was not paused; nothing to lift (recorded anyway).")
