"""Helpers every `recovery-cli` command module shares: one-sentence failures, JSON output and
the process runtime."""

from __future__ import annotations

import json as jsonlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from recovery.config.registry import Integration, RegistryError, UnknownIntegrationError
from recovery.config.settings import SettingsError
from recovery.engine.runtime import get_runtime


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def emit_json(data: Any) -> None:
    click.echo(jsonlib.dumps(data, indent=2, sort_keys=True, default=str))


def runtime_or_exit() -> Any:
    """The process runtime, or exit 2 with the settings/registry error as a sentence."""
    try:
        return get_runtime()
    except (SettingsError, RegistryError) as exc:
        fail(str(exc))


class CliGroup(click.Group):
    """Turns configuration errors raised anywhere under a command into one sentence, exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SettingsError, RegistryError) as exc:
            fail(str(exc))


def read_json_option(text: str, option: str, file_what: str) -> Any:
    """A JSON option's value, or the JSON of the file named by `@path`; exit 2 with a sentence
    naming the option (`--json`) or the file (`file_what`, e.g. "JSON body file")."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            fail(f"Cannot read the {file_what} {text[1:]!r}: {exc.strerror}.")
    try:
        return jsonlib.loads(text)
    except ValueError as exc:
        fail(f"The {option} value is not valid JSON ({exc}).")


Row = dict[str, Any]
T = TypeVar("T")


def show_per_integration(row: Callable[[Any, Integration], Row], line: Callable[[Row], str],
                         as_json: bool) -> None:
    """The body of a `status` command (`breaker`, `ratelimit`): one row per integration of the
    registry, printed as a JSON array or as one `line` each."""
    runtime = runtime_or_exit()
    rows = [row(runtime, integration) for integration in runtime.registry]
    if as_json:
        emit_json(rows)
        return
    for found in rows:
        click.echo(line(found))


def act_on_integration(action: Callable[[Any, str, str], T], integration_id: str,
                       why: str) -> T:
    """Run an operator's action (`action(runtime, integration_id, why)`, which audits it) on
    one integration; an unknown integration exits 2 with the registry's sentence."""
    runtime = runtime_or_exit()
    try:
        return action(runtime, integration_id, why)
    except UnknownIntegrationError as exc:
        fail(str(exc))
