"""`recovery-cli enqueue`, `test` and `jobs`: send a job, run one in this process, read the audit
trail."""

from __future__ import annotations

import json as jsonlib
import sys
from functools import partial
from typing import Any

import click

from recovery.audit.queries import get_job, list_jobs
from recovery.audit.writer import AuditWriter
from recovery.cli.common import emit_json, fail, read_json_option, runtime_or_exit
from recovery.core.message import JobSpec
from recovery.engine.producer import EnqueueError, build_job, submit
from recovery.engine.synchronous import run_synchronously


def _parse_body(text: str | None) -> Any:
    return None if text is None else read_json_option(text, "--json", "JSON body file")


def _parse_pairs(pairs: tuple[str, ...], sep: str, what: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        name, found, value = pair.partition(sep)
        if not found or not name.strip():
            fail(f"The {what} {pair!r} must look like 'name{sep}value'.")
        parsed[name.strip()] = value.strip() if what == "header" else value
    return parsed


def _write_queued(audit: AuditWriter, job: JobSpec, seq: int) -> bool:
    return audit.job_queued(job.job_id, job.integration, job.method, job.path, job.params,
                            job.idempotency_key, seq=seq)


@click.command()
@click.argument("integration")
@click.argument("method")
@click.argument("path")
@click.option("--json", "body", help="JSON body, or @file to read it from a file.")
@click.option("--param", "params", multiple=True, help="Query parameter k=v (repeatable).")
@click.option("--header", "headers", multiple=True, help="Header 'K: V' (repeatable).")
@click.option("--idempotency-key", help="Reuse this key; a key that succeeded is not re-run.")
@click.option("--on-success", help="Celery task of your app to receive the outcome.")
@click.option("--on-failure", help="Celery task of your app to receive a failure's outcome.")
def enqueue(integration: str, method: str, path: str, body: str | None,
            params: tuple[str, ...], headers: tuple[str, ...],
            idempotency_key: str | None, on_success: str | None,
            on_failure: str | None) -> None:
    """Validate and enqueue one call; prints the job id.

    \b
    Example:
      recovery-cli enqueue primary-api POST /orders --json '{"id": 1}' --header 'X-Team: a'
    """
    runtime = runtime_or_exit()
    try:
        job = build_job(runtime.registry, integration, method, path, json=_parse_body(body),
                        params=_parse_pairs(params, "=", "parameter") or None,
                        headers=_parse_pairs(headers, ":", "header"),
                        idempotency_key=idempotency_key, on_success=on_success,
                        on_failure=on_failure)
        # Refuses a key reused with another request; the queued row is written at once, so
        # `recovery-cli jobs show` finds the job even before a worker's drain runs.
        job_id = submit(runtime.idempotency, job, partial(_write_queued, runtime.audit))
    except EnqueueError as exc:
        fail(str(exc))
    click.echo(job_id)


@click.command("test")
@click.argument("integration")
@click.argument("method")
@click.argument("path")
@click.option("--json", "body", help="JSON body, or @file.")
@click.option("--verbose", is_flag=True, help="Print every step, not only the outcome.")
def test_call(integration: str, method: str, path: str, body: str | None, verbose: bool) -> None:
    """Make one resilient call now, in this process (no worker), and print the outcome.

    \b
    Example:
      recovery-cli test primary-api GET /health --verbose
    """
    runtime = runtime_or_exit()
    try:
        job = build_job(runtime.registry, integration, method, path, json=_parse_body(body))
    except EnqueueError as exc:
        fail(str(exc))
    steps = run_synchronously(job, runtime, on_step=_print_step if verbose else None)
    final = steps[-1]
    click.echo(f"outcome: {final.status}  attempts: {final.attempts}  "
               f"http_status: {final.http_status}  strategy: {final.strategy}  "
               f"fallback: {final.fallback}")
    if final.body is not None:
        click.echo(jsonlib.dumps(final.body, default=str)[:2000])
    sys.exit(0 if final.status in ("succeeded", "degraded", "duplicate") else 1)


def _print_step(step: Any) -> None:
    wait = f", next in {step.countdown_s:.2f} s" if step.countdown_s else ""
    made = step.attempts if step.status == "retry" else step.progress.attempt
    click.echo(f"  attempt {made}: {step.status}{wait}. {step.reason}")


@click.group()
def jobs() -> None:
    """Read jobs and their attempts from the audit trail."""


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def jobs_show(job_id: str, as_json: bool) -> None:
    """Show one job and every attempt.

    \b
    Example:
      recovery-cli jobs show 0b7c...-uuid --json
    """
    job = get_job(runtime_or_exit().engine, job_id)
    if job is None:
        fail(f"No job {job_id!r} is in the audit trail; check the id with 'jobs list'.", 1)
    if as_json:
        emit_json(job)
        return
    click.echo(f"{job['id']}  {job['integration']}  {job['method']} {job['path']}  "
               f"status={job['status']}  attempts={job['attempt_count']}  "
               f"strategy={job.get('strategy')}  outcome={job.get('outcome')}")
    for row in job["attempts"]:
        click.echo(f"  #{row['number']} {row['kind']:<9} {row['started_at']}  "
                   f"{row['duration_ms']} ms  http={row['http_status']}  "
                   f"{row['decision']}  delay={row['delay_ms']} ({row['delay_source']})  "
                   f"{row['error_message'] or ''}")


@jobs.command("list")
@click.option("--status", help="Only jobs in this status (e.g. retrying, dead).")
@click.option("--integration", help="Only jobs of this integration.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
def jobs_list(status: str | None, integration: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first.

    \b
    Example:
      recovery-cli jobs list --status dead --integration primary-api --json
    """

    try:
        rows = list_jobs(runtime_or_exit().engine, status=status, integration=integration,
                         limit=limit)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        emit_json(rows)
        return
    for job in rows:
        click.echo(f"{job['id']}  {job['integration']:<16} {job['status']:<10} "
                   f"attempts={job['attempt_count']}  {job['method']} {job['path']}")
