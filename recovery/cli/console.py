"""`recovery-cli console`: the operator web console, and `console hash-password` for its users.

The console is a sibling of `recovery-cli serve`, not part of it: `serve` answers load
balancers and Prometheus (no sessions, an optional bearer token) and may listen beyond
loopback; the console holds operator sessions and actions and binds 127.0.0.1 by default.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

import click

from recovery.cli.common import fail, runtime_or_exit

THREADS = 8


@click.group("console", invoke_without_command=True)
@click.option("--host", help="Address to bind (default CONSOLE_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default CONSOLE_PORT, 9809).")
@click.pass_context
def console_group(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the operator console: dead letters, breakers, rate limits, jobs, an overview.

    Refuses to start unless CONSOLE_USERS (or CONSOLE_AUTH_HEADER behind a proxy) and
    CONSOLE_SECRET_KEY are set.

    \b
    Examples:
      recovery-cli console hash-password          # prints a hash for CONSOLE_USERS
      CONSOLE_USERS='alice:operator:scrypt:...' CONSOLE_SECRET_KEY=$(openssl rand -hex 32) \\
        recovery-cli console --port 9809
    """
    if ctx.invoked_subcommand is not None:
        return
    # Imported when the command runs: `--help` and the other commands skip its cost.
    from recovery.ops.console import ConsoleConfig, ConsoleConfigError

    runtime = runtime_or_exit()
    try:
        config = ConsoleConfig.from_settings(runtime.settings, host, port)
    except ConsoleConfigError as exc:
        fail(str(exc))
    _serve(runtime, config)


def _serve(runtime: Any, config: Any) -> None:
    from waitress.server import create_server

    # Imported when the command runs: `--help` and the other commands skip its cost.
    from recovery.ops.console import create_app

    server: Any = create_server(create_app(runtime, config), host=config.host,
                                port=config.port, threads=THREADS, ident="recovery-console")

    def stop(signum: int, _frame: FrameType | None) -> None:
        server.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    cookies = "Secure" if config.secure_cookies else "not Secure (loopback bind)"
    click.echo(f"Console on http://{config.host}:{server.effective_port}/ "
               f"(session cookies {cookies}).", err=True)
    server.run()


@console_group.command("hash-password")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help="The password (prompted for when omitted; avoid it on a shared shell).")
def hash_password_command(password: str) -> None:
    """Print a salted scrypt hash of a password, for CONSOLE_USERS (name:role:hash).

    \b
    Example:
      recovery-cli console hash-password
    """
    # Imported when the command runs: `--help` and the other commands skip its cost.
    from recovery.ops.console.config import hash_password

    if len(password) < 8:
        fail("The password must be at least 8 characters long.")
    click.echo(hash_password(password))
