"""`recovery-cli simulate`, `monitor` and `report`: the original design's operator commands."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from recovery.cli.common import emit_json, fail, runtime_or_exit
from recovery.cli.demo import SetupError, choose_mode
from recovery.config.registry import RegistryError
from recovery.config.settings import SettingsError
from recovery.core.redact import redact_url
from recovery.demo.simulate import ERROR_TYPES, SimulationResult, SimulationSetupError, simulate
from recovery.telemetry.logging import configure_logging

SIMULATE_HELP = """Run one real failure scenario and print how it was recovered.

A local upstream that fails in the chosen way is started, and one job runs through the real
pipeline in this process (gates, breaker, retries, fallbacks, dead-letter queue, audit trail).
Redis keys go under a fresh prefix and are deleted afterwards; the audit rows stay, under the
integration simulate-<error type>. With nothing answering at REDIS_URL/DATABASE_URL (or with
--embedded) it runs on an in-memory breaker and a temporary SQLite audit file.

\b
Scenarios:
  network         connection refused, then reset, then 200
  rate_limit      429 with Retry-After: 1, then 200
  server_error    an outage: 503 until the breaker opens; a degraded fallback answers
  authentication  a stale OAuth token (401) is refreshed and the call repeated
  client_error    400: not retried, dead-lettered
  transient       408, 503, then 200
  unknown         a status no taxonomy knows: not retried, dead-lettered
  response_too_large  a 20 MiB answer: reading stops at 10 MiB, dead-lettered

\b
Example:
  recovery-cli simulate --error-type server_error --max-attempts 3 --verbose
"""


@click.command("simulate", help=SIMULATE_HELP)
@click.option("--error-type", required=True, type=click.Choice(ERROR_TYPES),
              help="Which failure the upstream shows.")
@click.option("--max-attempts", type=click.IntRange(1, 10), default=3, show_default=True,
              help="Total attempts the job may make.")
@click.option("--verbose", is_flag=True, help="Print every step and every upstream request.")
@click.option("--embedded", is_flag=True, help="Use no Redis/PostgreSQL even if they answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def simulate_command(error_type: str, max_attempts: int, verbose: bool, embedded: bool,
                     as_json: bool) -> None:

    configure_logging("critical")
    try:
        mode, why = choose_mode(os.environ, embedded)
    except SetupError as exc:
        fail(str(exc))
    say = (lambda line: click.echo(line, err=as_json)) if verbose else None
    if say is not None:
        say(f"Mode: {mode} ({why}).")
    try:
        result = simulate(error_type, max_attempts, mode=mode,
                          on_step=(lambda step: _say_step(say, step)) if say else None)
    except (SimulationSetupError, SettingsError, RegistryError) as exc:
        fail(str(exc))
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(render_simulation(result, verbose))


def _say_step(say: Any, step: Any) -> None:
    wait = f", next in {step.countdown_s:.2f} s" if step.countdown_s else ""
    made = step.attempts if step.status == "retry" else step.progress.attempt
    say(f"  attempt {made}: {step.status}{wait}. {step.reason}")


def _calls(n: int) -> str:
    return "1 call" if n == 1 else f"{n} calls"


def render_simulation(result: SimulationResult, verbose: bool = False) -> str:
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    success = yes(result.success) + (" (degraded answer)" if result.outcome == "degraded" else "")
    rows = [("success", success), ("outcome", result.outcome),
            ("strategy", result.strategy or "none needed"),
            ("attempts", f"{result.attempts} ({_calls(result.calls)} to the upstream)"),
            ("recovery time", f"{result.recovery_time_ms} ms"),
            ("fallback used", result.fallback_used or "no"),
            ("breaker tripped", yes(result.breaker_tripped)),
            ("queued for later", yes(result.queued_for_later)
             + (" (dead-lettered)" if result.queued_for_later else ""))]
    lines = [f"Simulated {result.error_type}: {result.description}",
             f"Integration {result.integration}, upstream {result.upstream_url}, "
             f"{result.mode} mode, job {result.job_id}."]
    lines += [f"  {name + ':':<18}{value}" for name, value in rows]
    if verbose:
        lines.append(f"  {'reason:':<18}{result.reason}")
    return "\n".join(lines)


@click.command("monitor")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Seconds between frames.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the frame as JSON.")
def monitor_command(interval: float, once: bool, as_json: bool) -> None:
    """A live terminal view of breakers, queue and DLQ depths, and recent failures.

    Refreshes every --interval seconds until Ctrl+C. The activity figures cover the last
    five minutes of the audit trail.

    \b
    Example:
      recovery-cli monitor --interval 5
    """
    # Imported when the command runs: `--help` and the other commands skip its cost.
    from recovery.ops.monitor import collect, render

    if as_json and not once:
        fail("--json prints a single frame; use it together with --once.")
    runtime = runtime_or_exit()
    if once:
        frame = collect(runtime)
        if as_json:
            emit_json(frame.to_dict())
        else:
            click.echo(render(frame))
        return
    terminal = sys.stdout.isatty()
    try:
        while True:
            text = render(collect(runtime))
            if terminal:
                click.clear()
            click.echo(text + ("" if terminal else "\n"))
            time.sleep(interval)
    except KeyboardInterrupt:
        click.echo("\nMonitor stopped.")


@click.command("report")
@click.option("--since", default="24h", show_default=True,
              help="Start of the window: an age (30m, 24h, 7d) or an ISO 8601 time.")
@click.option("--integration", help="Only this integration.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write a self-contained HTML page with charts to this file.")
def report_command(since: str, integration: str | None, as_json: bool,
                   html_path: str | None) -> None:
    """Error analytics from the audit trail.

    Calls and failures by integration and error class, success after retry, time to recover
    (first failure to next success), fallback use, DLQ size and age, slowest endpoints.

    \b
    Example:
      recovery-cli report --since 7d --integration primary-api --html report.html
    """
    from sqlalchemy.exc import SQLAlchemyError

    # Imported when the command runs: `--help` and the other commands skip its cost.
    from recovery.ops.report import build_report, parse_window
    from recovery.ops.report_html import render_html

    try:
        window = parse_window(since, integration)
    except ValueError as exc:
        fail(str(exc))
    runtime = runtime_or_exit()
    try:
        data = build_report(runtime.engine, window)
    except SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fail(f"Cannot read the audit trail at {redact_url(runtime.settings.database_url)} "
             f"({reason}); check DATABASE_URL and run 'recovery-cli db upgrade'.", 1)
    if html_path is not None:
        try:
            Path(html_path).write_text(render_html(data), encoding="utf-8")
        except OSError as exc:
            fail(f"Cannot write the HTML report to {html_path!r}: {exc.strerror}.", 1)
    if as_json:
        emit_json(data)
        return
    click.echo(render_report(data))
    if html_path is not None:
        click.echo(f"\nHTML report written to {html_path}.")


def render_report(data: dict[str, Any]) -> str:
    """The report as terminal text."""
    window, totals = data["window"], data["totals"]
    lines = [f"Report {window['since']} .. {window['until']}"
             f"{' for ' + window['integration'] if window['integration'] else ''}",
             f"calls {totals['calls']}, failed {totals['failures']}, jobs {totals['jobs']}, "
             f"succeeded after retry {totals['succeeded_after_retry']}, "
             f"parked dead letters {data['dlq']['parked']}"
             + (f" (oldest {data['dlq']['oldest_age_s']} s)" if data["dlq"]["parked"] else "")]
    sections = [
        ("Attempts by integration", data["attempts"],
         ("integration", "calls", "failures", "failure_rate")),
        ("Failures by error class", data["failures_by_class"],
         ("integration", "error_class", "failures")),
        ("Success after retry", data["retry_success"],
         ("integration", "jobs", "succeeded_first_try", "succeeded_after_retry", "degraded",
          "dead_or_failed")),
        ("Time to recover", data["recovery"],
         ("integration", "recoveries", "mean_ms", "max_ms", "failing_since")),
        ("Fallback use", data["fallbacks"], ("integration", "fallback", "jobs")),
        ("Slowest endpoints", data["slowest_endpoints"],
         ("integration", "method", "path", "calls", "p95_ms", "max_ms")),
        ("Workflow runs", data["workflow_runs"], ("workflow", "status", "runs")),
    ]
    for title, rows, columns in sections:
        lines += ["", title]
        lines += [_text_row(row, columns) for row in rows] or ["  none"]
    return "\n".join(lines)


def _text_row(row: dict[str, Any], columns: tuple[str, ...]) -> str:
    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1%}"
        return "-" if value is None else str(value)

    return "  " + "  ".join(f"{column}={shown(row[column])}" for column in columns)
