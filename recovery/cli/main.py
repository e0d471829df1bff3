"""`recovery-cli`: the producers' and operators' command line.

Bad input exits 2 with one sentence; a command that ran but failed exits 1. Each command group
lives in its own module of this package; this one builds the top-level group from them.
"""

from __future__ import annotations

import click

from recovery.cli.breaker import breaker
from recovery.cli.common import CliGroup
from recovery.cli.config import config_group
from recovery.cli.console import console_group
from recovery.cli.db import db
from recovery.cli.demo import demo_command
from recovery.cli.dlq import dlq_group, replay_dlq_command
from recovery.cli.jobs import enqueue, jobs, test_call
from recovery.cli.ops import monitor_command, report_command, simulate_command
from recovery.cli.ratelimit import ratelimit
from recovery.cli.results import jobs_result
from recovery.cli.strategies import strategies_command
from recovery.cli.workflow import workflow_group
from recovery.config.settings import get_settings
from recovery.ops.serve import serve_command
from recovery.telemetry.logging import configure_logging


@click.group(cls=CliGroup)
@click.version_option(package_name="api-recovery", prog_name="recovery-cli",
                      message="%(prog)s %(version)s")
def main() -> None:
    """Resilient third-party API calls as Celery jobs.

    \b
    Example:
      recovery-cli enqueue primary-api POST /orders --json '{"id": 1}'
    """
    configure_logging(get_settings().log_level)


for _command in (enqueue, test_call, jobs, db, breaker, demo_command, dlq_group,
                 replay_dlq_command, serve_command, simulate_command, monitor_command,
                 report_command, ratelimit, console_group, workflow_group,
                 strategies_command, config_group):
    main.add_command(_command)
jobs.add_command(jobs_result)
