"""`recovery-cli breaker`: see and steer the cluster's circuit breakers."""

from __future__ import annotations

from typing import Any

import click

from recovery.cli.common import Row, act_on_integration, show_per_integration
from recovery.config.registry import Integration
from recovery.ops.steering import steer_breaker


def _snapshot_dict(runtime: Any, integration: Integration) -> Row:
    snap = runtime.breaker(integration).snapshot()
    return {
        "integration": integration.id,
        "state": snap.state,
        "consecutive_failures": snap.consecutive_failures,
        "window_calls": snap.window_calls,
        "window_failures": snap.window_failures,
        "opened_at": snap.opened_at.isoformat() if snap.opened_at else None,
        "time_to_half_open_s": snap.time_to_half_open_s,
        "probes_in_flight": snap.probes_in_flight,
        "failed_probes": snap.failed_probes,
        "open_ms": snap.open_ms,
        "backend": snap.backend,
    }


@click.group()
def breaker() -> None:
    """Circuit breaker state per integration, and manual control."""


@breaker.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
def breaker_status(as_json: bool) -> None:
    """State, counters, opened at and time to half-open for every integration.

    \b
    Example:
      recovery-cli breaker status --json
    """
    show_per_integration(_snapshot_dict, _status_line, as_json)


def _status_line(row: Row) -> str:
    half_open = row["time_to_half_open_s"]
    wait = f"  half-open in {half_open:.1f} s" if half_open else ""
    return (f"{row['integration']:<20} {row['state']:<9} failures="
            f"{row['consecutive_failures']} window={row['window_failures']}/"
            f"{row['window_calls']} opened_at={row['opened_at'] or '-'}{wait}")


def _steer(integration_id: str, action: str, reason: str | None) -> None:
    state = act_on_integration(
        lambda runtime, name, why: steer_breaker(runtime, name, action, why, {}),
        integration_id, reason or f"operator {action} from recovery-cli")
    click.echo(f"Breaker for {integration_id!r} is now {state}.")


@breaker.command("open")
@click.argument("integration")
@click.option("--reason", help="Why, for the audit trail.")
def breaker_open(integration: str, reason: str | None) -> None:
    """Open an integration's breaker by hand (audited).

    \b
    Example:
      recovery-cli breaker open primary-api --reason "vendor maintenance"
    """
    _steer(integration, "open", reason)


@breaker.command("close")
@click.argument("integration")
@click.option("--reason", help="Why, for the audit trail.")
def breaker_close(integration: str, reason: str | None) -> None:
    """Close an integration's breaker by hand (audited).

    \b
    Example:
      recovery-cli breaker close primary-api
    """
    _steer(integration, "close", reason)
