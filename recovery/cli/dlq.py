"""`recovery-cli dlq ...` and `recovery-cli replay-dlq`: see, replay, quarantine and purge.

Exit codes: 0 done, 1 the command ran but something failed (an entry did not move, Redis was
unreachable, another run holds the DLQ), 2 bad arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import click
import redis

from recovery.cli.common import emit_json, fail, runtime_or_exit
from recovery.config.settings import get_settings
from recovery.core.errors import ErrorCategory
from recovery.core.redact import redact_url
from recovery.dlq.purge import ReleaseError, purge, quarantined, release
from recovery.dlq.replay import PlanItem, ReplayOptions, ReplayReport, replay_dlq
from recovery.dlq.store import (
    DlqBusyError,
    DlqUnavailableError,
    Entry,
    EntryFilter,
    QueueList,
    dlq_client,
    envelope_view,
)
from recovery.dlq.timeargs import parse_age, parse_since

ERROR_CLASSES = click.Choice([category.value for category in ErrorCategory],
                             case_sensitive=False)


@contextmanager
def dlq_errors() -> Iterator[None]:
    """Turn the failures an operator can act on into one sentence and exit 1."""
    try:
        yield
    except (DlqBusyError, DlqUnavailableError) as exc:
        fail(str(exc), 1)
    except redis.RedisError as exc:

        fail(f"Could not reach Redis at {redact_url(get_settings().redis_url)} ({exc}); check "
             "REDIS_URL and that Redis is running.", 1)


def _dlq(runtime: Any) -> QueueList:
    return QueueList(dlq_client(runtime), runtime.settings.redis_key_prefix)


def _entry_line(entry: Entry) -> str:
    envelope = entry.envelope
    if envelope is None:
        return f"{'-':<32}  {entry.job_id or '-':<36}  malformed: {entry.problem}"
    view = envelope_view(envelope)
    return (f"{envelope.dead_at[:32]:<32}  {envelope.job_id:<36}  {envelope.integration:<16} "
            f"{','.join(envelope.error_categories) or '-':<20} status={envelope.last_status} "
            f"attempts={envelope.attempts} replays={envelope.replay_count}  "
            f"{view['message'][:80]}")


def _entry_json(entry: Entry) -> dict[str, Any]:
    if entry.envelope is None:
        return {"kind": "malformed", "job_id": entry.job_id, "problem": entry.problem}
    return envelope_view(entry.envelope)


@click.group("dlq")
def dlq_group() -> None:
    """The dead-letter queue: list, show, purge, and the quarantine.

    \b
    Example:
      recovery-cli dlq list --integration payments --error-class server_error
    """


@dlq_group.command("list")
@click.option("--integration", help="Only entries of this integration.")
@click.option("--error-class", type=ERROR_CLASSES, help="Only entries with this error category.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
def dlq_list(integration: str | None, error_class: str | None, as_json: bool) -> None:
    """List dead letters, oldest first, without taking them off the queue.

    Malformed entries are listed whatever the filters.

    \b
    Example:
      recovery-cli dlq list --error-class rate_limit --json
    """
    flt = EntryFilter(integration=integration, error_class=error_class)
    runtime = runtime_or_exit()
    with dlq_errors():
        rows = [entry for entry in _dlq(runtime).entries()
                if entry.envelope is None or flt.matches(entry.envelope)]
    if as_json:
        emit_json([_entry_json(entry) for entry in rows])
        return
    for entry in rows:
        click.echo(_entry_line(entry))
    click.echo(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}.")


@dlq_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dlq_show(job_id: str, as_json: bool) -> None:
    """Show the whole envelope of one dead letter (secrets removed).

    \b
    Example:
      recovery-cli dlq show 6f1c2a40-8d0e-4c55-9a8e-2f4b1d7c9e10 --json
    """
    runtime = runtime_or_exit()
    with dlq_errors():
        entry = _dlq(runtime).find(job_id)
    if entry is None:
        fail(f"No entry of job {job_id!r} is in the DLQ; 'recovery-cli dlq list' shows what is.",
             1)
    shown = _entry_json(entry)
    if as_json:
        emit_json(shown)
        return
    for name, value in shown.items():
        click.echo(f"{name:>18}: {value}")


@dlq_group.command("purge")
@click.option("--older-than", help="Only entries dead longer ago than this, e.g. 7d, 12h.")
@click.option("--integration", help="Only entries of this integration.")
@click.option("--yes", is_flag=True, help="Confirm: purged entries are gone for good.")
def dlq_purge(older_than: str | None, integration: str | None, yes: bool) -> None:
    """Delete dead letters for good (all of them, unless filtered).

    Malformed entries are purged only when no filter is given.

    \b
    Example:
      recovery-cli dlq purge --older-than 7d --integration payments --yes
    """
    cutoff = None
    if older_than is not None:
        try:
            cutoff = datetime.now(UTC) - parse_age(older_than)
        except ValueError as exc:
            fail(f"--older-than: {exc}")
    if not yes:
        fail("Purging deletes dead letters for good; pass --yes to confirm.")
    runtime = runtime_or_exit()
    with dlq_errors():
        report = purge(runtime, EntryFilter(integration=integration, older_than=cutoff))
    click.echo(f"Purged {report.purged} entries; {report.kept} stay in the DLQ.")


@dlq_group.group("quarantine")
def quarantine_group() -> None:
    """Entries that replay will not touch: malformed, or past DLQ_MAX_RETRIES replays.

    \b
    Example:
      recovery-cli dlq quarantine list --json
    """


@quarantine_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
def quarantine_list(as_json: bool) -> None:
    """List quarantined entries, oldest first, with the reason each is there.

    \b
    Example:
      recovery-cli dlq quarantine list
    """
    runtime = runtime_or_exit()
    with dlq_errors():
        rows = []
        for entry, record in quarantined(runtime):
            rows.append(record.view() if record is not None else
                        {"kind": "unreadable", "bytes": len(entry.raw)})
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row.get('quarantined_at', '-'):<32}  {row.get('job_id') or '-':<36}  "
                   f"{row.get('integration') or '-':<16} {row.get('reason', 'unreadable')}")
    click.echo(f"{len(rows)} quarantined.")


@quarantine_group.command("release")
@click.argument("job_id")
def quarantine_release(job_id: str) -> None:
    """Send a quarantined job back to its work queue, once more past the replay cap.

    \b
    Example:
      recovery-cli dlq quarantine release 6f1c2a40-8d0e-4c55-9a8e-2f4b1d7c9e10
    """
    runtime = runtime_or_exit()
    with dlq_errors():
        try:
            job = release(runtime, job_id)
        except ReleaseError as exc:
            fail(str(exc), 1)
    click.echo(f"Released job {job.job_id}: queued again as replay {job.replay_count}.")


def _options(runtime: Any, integration: str | None, error_class: str | None, since: str | None,
             job: str | None, limit: int | None, rate: float | None,
             dry_run: bool) -> ReplayOptions:
    if integration is not None and integration not in runtime.registry.ids():
        fail(f"Unknown integration {integration!r}; known integrations: "
             f"{', '.join(runtime.registry.ids())}.")
    start = None
    if since is not None:
        try:
            start = parse_since(since)
        except ValueError as exc:
            fail(f"--since: {exc}")
    flt = EntryFilter(integration=integration, error_class=error_class, since=start, job_id=job)
    return ReplayOptions(filter=flt, limit=limit, rate=rate, dry_run=dry_run)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _terminal() -> bool:
    return sys.stderr.isatty()


def _confirmed(plan: ReplayReport) -> bool:
    """Ask on the terminal, after showing the dry run's plan."""
    counts = plan.summary()
    return click.confirm(f"Replay {counts['replayed']} entries, quarantine "
                         f"{counts['quarantined']} and skip {counts['skipped']}?")


def _run(runtime: Any, options: ReplayOptions, plan: ReplayReport | None) -> ReplayReport:
    """The run; given the dry run's `plan`, with a progress bar whose length is the entries
    the run selects, not the whole DLQ."""
    if plan is None:
        return replay_dlq(runtime, options)
    with click.progressbar(length=len(plan.items), label="Replaying", file=sys.stderr) as bar:
        update: Callable[[int], None] = bar.update
        return replay_dlq(runtime, options, on_progress=update)


def _item_line(item: PlanItem, dry_run: bool) -> str:
    verb = f"would {item.action}" if dry_run else item.action
    return f"{verb:<16} {item.job_id or '-':<36}  {item.integration or '-':<16} {item.reason}"


def _print_report(report: ReplayReport) -> None:
    for item in report.items:
        if report.dry_run or item.action != "replay":
            click.echo(_item_line(item, report.dry_run))
    counts = report.summary()
    prefix = "Dry run, nothing changed: would have" if report.dry_run else "Done:"
    click.echo(f"{prefix} replayed {counts['replayed']}, skipped {counts['skipped']}, "
               f"quarantined {counts['quarantined']}, failed {counts['failed']}.")
    for error in report.errors:
        click.echo(f"Error: {error}", err=True)


@click.command("replay-dlq")
@click.option("--integration", help="Only entries of this integration.")
@click.option("--error-class", type=ERROR_CLASSES, help="Only entries with this error category.")
@click.option("--since", help="Only entries dead since: an age (2h, 7d) or an ISO 8601 time.")
@click.option("--job", "job_id", help="Only the entry of this job id.")
@click.option("--limit", type=click.IntRange(min=1),
              help="Replay at most N entries (moves to quarantine do not count).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True, max=1_000_000),
              help="Replay at most N entries per second.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed, skipped and why; "
              "change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def replay_dlq_command(integration: str | None, error_class: str | None, since: str | None,
                       job_id: str | None, limit: int | None, rate: float | None,
                       dry_run: bool, yes: bool, as_json: bool) -> None:
    """Push dead letters back to their work queues (same job id and idempotency key).

    Entries that do not match the filters stay in the DLQ, in order. An entry replayed
    DLQ_MAX_RETRIES times goes to quarantine, and so does a malformed one (whatever the
    filters); an entry whose integration's breaker is open is skipped. Exit 1 if some
    entries failed to move.

    \b
    Examples:
      recovery-cli replay-dlq --integration payments --since 2h --dry-run
      recovery-cli replay-dlq --error-class server_error --limit 500 --rate 50 --yes
    """
    runtime = runtime_or_exit()
    options = _options(runtime, integration, error_class, since, job_id, limit, rate, dry_run)
    ask = not dry_run and not yes
    if ask and not _interactive():
        fail("Replay needs confirmation and stdin is not a terminal; pass --yes to replay.")
    show_progress = _terminal() and not as_json
    with dlq_errors():
        # One dry run serves both the question and the progress bar's length.
        plan = (replay_dlq(runtime, replace(options, dry_run=True))
                if ask or (show_progress and not dry_run) else None)
        if ask and plan is not None and not _confirmed(plan):
            click.echo("Nothing was replayed.")
            return
        report = _run(runtime, options, plan if show_progress else None)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_report(report)
    sys.exit(report.exit_code)
