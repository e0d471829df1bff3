"""`recovery-cli jobs result`: a job's final outcome from the result store."""

from __future__ import annotations

import json as jsonlib

import click

from recovery.cli.common import emit_json, fail, runtime_or_exit

BODY_SHOWN_CHARS = 20_000


@click.command("result")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the outcome).")
@click.option("--wait", "wait_s", type=click.FloatRange(0, 86_400), default=0.0,
              show_default=True, help="Wait up to this many seconds for the job to finish.")
def jobs_result(job_id: str, as_json: bool, wait_s: float) -> None:
    """Show a job's final outcome: status, HTTP status, parsed body, fallback used.

    Outcomes are kept in Redis for RESULT_TTL (24 h by default). Exits 0 for a job that
    succeeded (also degraded or duplicate), 1 for a failed or dead job or when there is no
    result (yet).

    \b
    Example:
      recovery-cli jobs result 0b7c...-uuid --wait 30 --json
    """
    results = runtime_or_exit().results
    outcome = results.wait(job_id, wait_s) if wait_s > 0 else results.get(job_id)
    if outcome is None:
        waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
        fail(f"Job {job_id!r} has no result{waited}: it has not finished, or its result "
             "expired (RESULT_TTL); 'jobs show' reads its state from the audit trail.", 1)
    if as_json:
        emit_json(outcome.to_dict())
    else:
        click.echo(f"{outcome.job_id}  {outcome.integration}  status={outcome.status}  "
                   f"http={outcome.http_status}  fallback={outcome.fallback or '-'}  "
                   f"strategy={outcome.strategy or '-'}  attempts={outcome.attempts}")
        if outcome.error:
            click.echo(f"error: {outcome.error}")
        if outcome.duplicate_of:
            click.echo(f"duplicate of: {outcome.duplicate_of}")
        if outcome.body_omitted:
            click.echo(f"body: not kept. {outcome.body_omitted}")
        elif outcome.body is not None:
            click.echo(jsonlib.dumps(outcome.body, indent=2, default=str)[:BODY_SHOWN_CHARS])
    raise SystemExit(0 if outcome.ok else 1)
