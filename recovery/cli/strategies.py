"""`recovery-cli strategies INTEGRATION`: the recovery strategy each failure of an integration
gets, as resolved from the default table and its `strategies:` block."""

from __future__ import annotations

from typing import Any

import click
import requests

from recovery.cli.common import emit_json, fail, runtime_or_exit
from recovery.config.strategies import CATEGORY_NAMES, UNREPAIRABLE
from recovery.core.errors import classify
from recovery.core.strategies import resolve


def _rows(integration: Any) -> list[dict[str, Any]]:
    keys: list[tuple[str, int | None]] = [(name, None) for name in CATEGORY_NAMES]
    for key in integration.strategies:
        if key.isdigit():  # a status block: under the category that status is classified as
            response = requests.Response()
            response.status_code = int(key)
            keys.append((str(classify(response=response).primary), int(key)))
    rows = []
    for category, status in keys:
        s = resolve(integration, category, status)
        rows.append({
            "key": s.key, "strategy": s.name, "attempts": s.stop.attempts,
            "initial_delay_ms": s.wait.initial_ms, "factor": s.wait.factor,
            "max_delay_ms": s.wait.max_ms, "retry": s.retry, "breaker": s.breaker,
            "fallbacks": [] if category in UNREPAIRABLE else [  # never repaired by one
                f"{f.type}:{f.priority}" for f in s.chain(integration)],
            "alert": s.alert, "refresh_token": s.refresh_token, "dead_letter": s.dead_letter})
    return rows


def _shown(value: Any) -> str:
    return "class" if value is None else str(value).lower()


@click.command("strategies")
@click.argument("integration")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
def strategies_command(integration: str, as_json: bool) -> None:
    """Show the recovery strategy of each error category (and configured status) of an
    integration: attempts, delays, breaker, fallback chain, alert. "class" means the error's
    class decides (retryable or not, counted by the breaker or not).

    \b
    Example:
      recovery-cli strategies payments --json
    """
    registry = runtime_or_exit().registry
    if integration not in registry:
        fail(f"Unknown integration {integration!r}. Known integrations: "
             f"{', '.join(registry.ids())}.")
    rows = _rows(registry.get(integration))
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['key']:<19} {row['strategy']:<22} attempts={row['attempts']} "
                   f"delay={row['initial_delay_ms']:g}ms x{row['factor']:g} "
                   f"cap={row['max_delay_ms']:g}ms retry={_shown(row['retry'])} "
                   f"breaker={_shown(row['breaker'])} "
                   f"fallbacks={','.join(row['fallbacks']) or '-'} "
                   f"alert={_shown(row['alert'])} dead_letter={_shown(row['dead_letter'])}")
