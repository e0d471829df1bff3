"""Helpers every `recovery-cli` command module shares: one-sentence failures, JSON output and
the process runtime."""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from recovery.config.registry import RegistryError
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
