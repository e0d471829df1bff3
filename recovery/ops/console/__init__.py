"""The operator console: dead letters, breakers, rate-limit pauses, jobs, workflow runs and an
overview.

Server-rendered Flask pages served by waitress (`recovery-cli console`). Every page shows what
the CLI's `--json` output shows (redacted by the same functions); every action calls the same
engine functions as the CLI and is written to the audit trail with the operator's name.
"""

from recovery.ops.console.app import create_app
from recovery.ops.console.config import ConsoleConfig, ConsoleConfigError

__all__ = ["ConsoleConfig", "ConsoleConfigError", "create_app"]
