"""`recovery-cli db`: apply or roll back the audit database's migrations."""

from __future__ import annotations

import click

from recovery.audit.db import downgrade, upgrade
from recovery.cli.common import fail
from recovery.config.settings import get_settings


@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations (same as `alembic upgrade head`).

    \b
    Example:
      DATABASE_URL=postgresql://postgres@127.0.0.1/postgres recovery-cli db upgrade
    """
    upgrade(get_settings().database_url, revision)
    click.echo(f"Database upgraded to {revision}.")


@db.command("downgrade")
@click.option("--revision", default="base", show_default=True)
@click.option("--yes", is_flag=True, help="Confirm: this drops audit data.")
def db_downgrade(revision: str, yes: bool) -> None:
    """Revert migrations (drops tables at base).

    \b
    Example:
      recovery-cli db downgrade --revision base --yes
    """
    if not yes:
        fail("Downgrading drops audit data; pass --yes to confirm.")
    downgrade(get_settings().database_url, revision)
    click.echo(f"Database downgraded to {revision}.")
