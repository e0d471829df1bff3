"""`recovery-cli workflow`: start, inspect, list, replay and compensate workflow runs.

Exit codes: 0 done, 1 the run or state does not allow it (unknown run, not dead), 2 bad input
(unknown workflow, input that is not a JSON object, an invalid workflows file).
"""

from __future__ import annotations

from typing import Any

import click

from recovery.cli.common import emit_json, fail, read_json_option, runtime_or_exit
from recovery.config.workflows import WorkflowError
from recovery.engine.workflows.runs import (
    WorkflowInputError,
    compensate_run,
    replay_run,
    start_run,
    workflows,
)
from recovery.engine.workflows.store import RunFilter, RunStateError, get_run, list_runs
from recovery.engine.workflows.view import shown_run


def _runtime() -> Any:
    """The runtime, with the workflow definitions loaded (an invalid file: exit 2)."""
    runtime = runtime_or_exit()
    try:
        workflows(runtime)
    except WorkflowError as exc:
        fail(str(exc))
    return runtime


@click.group("workflow")
def workflow_group() -> None:
    """Multi-step workflows: run, show, list, replay, compensate."""


@workflow_group.command("run")
@click.argument("name")
@click.option("--input", "input_text", default="{}", show_default=True,
              help="The run's input: a JSON object, or @file.json.")
def workflow_run(name: str, input_text: str) -> None:
    """Start a run of workflow NAME; prints the run id.

    \b
    Example:
      recovery-cli workflow run order --input @order.json
    """
    runtime = _runtime()
    run_input = read_json_option(input_text, "--input", "input file")
    try:
        click.echo(start_run(runtime, name, run_input))
    except WorkflowInputError as exc:
        fail(str(exc))


@workflow_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an object).")
def workflow_show(run_id: str, as_json: bool) -> None:
    """A run and each of its steps: status, attempts, timing, error (input and outputs
    redacted like every display).

    \b
    Example:
      recovery-cli workflow show 5f0c... --json
    """
    runtime = runtime_or_exit()
    found = get_run(runtime.engine, run_id)
    if found is None:
        fail(f"There is no workflow run {run_id!r}; `recovery-cli workflow list` shows the "
             "runs.", 1)
    run = shown_run(runtime, found)
    if as_json:
        emit_json(run)
        return
    click.echo(f"run {run['id']}  workflow={run['workflow']}  status={run['status']}  "
               f"replays={run['replay_count']}")
    if run["error"]:
        click.echo(f"  error: {run['error']}")
    for step in run["steps"]:
        timing = f"{step['duration_ms']} ms" if step["duration_ms"] is not None else "-"
        kind = f"{step['type']}{' (undo)' if step['undo'] else ''}"
        click.echo(f"  {step['step']:<16} {kind:<22} {step['status']:<10} "
                   f"attempts={step['attempts']:<3} {timing}")
        if step["error"]:
            click.echo(f"      {step['error']}")


@workflow_group.command("list")
@click.option("--status", help="Only runs in this status (e.g. dead).")
@click.option("--workflow", "name", help="Only runs of this workflow.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
def workflow_list(status: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """Workflow runs, newest first.

    \b
    Example:
      recovery-cli workflow list --status dead --workflow order
    """
    runtime = runtime_or_exit()
    runs = list_runs(runtime.engine, RunFilter(status=status, workflow=name), limit=limit)
    if as_json:
        emit_json(runs)
        return
    for run in runs:
        click.echo(f"{run['id']}  {run['workflow']:<16} {run['status']:<12} "
                   f"replays={run['replay_count']}  {run['created_at']}")


@workflow_group.command("replay")
@click.argument("run_id")
def workflow_replay(run_id: str) -> None:
    """Resume a dead run from its failed step; steps that succeeded are not run again.

    \b
    Example:
      recovery-cli workflow replay 5f0c...
    """
    runtime = _runtime()
    try:
        replay_run(runtime, run_id)
    except WorkflowInputError as exc:
        fail(str(exc))
    except RunStateError as exc:
        fail(str(exc), 1)
    click.echo(f"Workflow run {run_id} resumed.")


@workflow_group.command("compensate")
@click.argument("run_id")
def workflow_compensate(run_id: str) -> None:
    """Give up on a dead run: run the undo steps of its completed steps, latest first.

    \b
    Example:
      recovery-cli workflow compensate 5f0c...
    """
    runtime = _runtime()
    try:
        steps = compensate_run(runtime, run_id)
    except WorkflowInputError as exc:
        fail(str(exc))
    except RunStateError as exc:
        fail(str(exc), 1)
    click.echo(f"Workflow run {run_id} is compensating: undoing {', '.join(steps)}.")
