"""Issue 16: `recovery-cli --version` and where the Alembic migrations are found."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.audit import db
from recovery.cli.main import main


def test_version_prints_the_installed_distribution_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "not-a-level")  # --version needs no valid settings
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"recovery-cli {importlib.metadata.version('api-recovery')}\n"


def test_migrations_come_from_the_installed_package() -> None:
    location = db.migrations_dir()
    assert (location / "env.py").is_file() and (location / "alembic.ini").is_file()
    config = db.migrations_config("sqlite://")
    assert config.get_main_option("script_location") == str(location)
    assert config.config_file_name == str(location / "alembic.ini")


def test_without_the_package_the_checkouts_folder_is_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "MIGRATIONS_PACKAGE", "recovery_migrations_not_installed")
    assert db.migrations_dir() == Path(db.__file__).resolve().parents[2] / "migrations"


def test_missing_migrations_are_one_sentence_saying_to_reinstall(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(db, "MIGRATIONS_PACKAGE", "recovery_migrations_not_installed")
    monkeypatch.setattr(db, "_CHECKOUT_MIGRATIONS", tmp_path / "migrations")
    with pytest.raises(RuntimeError) as raised:
        db.migrations_dir()
    assert str(raised.value) == (
        f"The audit-trail migrations are missing (no env.py in {tmp_path / 'migrations'}). "
        "Reinstall api-recovery (pip install .) so that its recovery_migrations package is "
        "present.")
