"""Every recovery-cli command documents itself with an example."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from recovery.cli.main import main


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ALL = list(commands(main))


def test_the_command_set_is_complete() -> None:
    top = {path[0] for path in ALL}
    assert {"enqueue", "test", "jobs", "db", "breaker", "dlq", "replay-dlq", "serve",
            "demo", "simulate", "monitor", "report"} <= top


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    if not isinstance(command, click.Group):
        assert "Example" in result.output, f"recovery-cli {' '.join(path)} --help has no example"
