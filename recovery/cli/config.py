"""`recovery-cli config`: the JSON Schema of the integrations file (or of the environment's
settings), and a check of a file."""

from __future__ import annotations

import json
import os

import click

from recovery.cli.common import fail
from recovery.config.file_models import integrations_file_schema
from recovery.config.loader import load_file as load_integrations
from recovery.config.registry import RegistryError
from recovery.config.settings import get_settings, settings_json_schema
from recovery.config.workflow_file import load_file as load_workflows
from recovery.config.workflows import WorkflowError


@click.group("config")
def config_group() -> None:
    """The integrations file (RECOVERY_INTEGRATIONS): its schema and a check."""


@config_group.command("schema")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write the schema to this file instead of standard output.")
@click.option("--settings", "of_settings", is_flag=True,
              help="The schema of the environment's settings (one property per variable) "
                   "instead of the integrations file's.")
def schema_command(output: str | None, of_settings: bool) -> None:
    """Print the JSON Schema of the integrations file, for an editor's YAML language server
    (with --settings: of the environment variables, their defaults and bounds).

    \b
    Example:
      recovery-cli config schema --output integrations.schema.json
      recovery-cli config schema --settings
    """
    schema = settings_json_schema() if of_settings else integrations_file_schema()
    text = json.dumps(schema, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        fail(f"Cannot write the schema to {output!r}: {exc.strerror}.")


@config_group.command("check")
@click.argument("file", required=False)
def check_command(file: str | None) -> None:
    """Validate an integrations file (default: RECOVERY_INTEGRATIONS) as a worker would at
    start, ${NAME} references and OAuth secrets included; exit 2 with the first problem.

    \b
    Example:
      recovery-cli config check deploy/integrations.yaml
    """
    settings = get_settings()
    path = file or settings.integrations_file
    if not path:
        fail("No integrations file to check: name one, or set RECOVERY_INTEGRATIONS.")
    try:
        registry = load_integrations(path, settings, os.environ)
        workflows = load_workflows(path, registry.ids(), required=False)
    except (RegistryError, WorkflowError) as exc:
        fail(str(exc))
    click.echo(f"ok: {len(registry)} integrations, {len(workflows)} workflows")
