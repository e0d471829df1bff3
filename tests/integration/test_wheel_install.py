"""Issue 16: the wheel is complete. Built from a copy of the checkout and installed into a fresh
venv outside it, `recovery-cli db upgrade` migrates a database from an unrelated directory, and
`recovery-cli --version` reads the installed distribution's metadata."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from recovery.audit.models import Base
from tests.integration.conftest import ADMIN_DSN, REPO, _admin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SOURCES = ["setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "beat_schedule.py",
           "recovery", "tasks", "migrations"]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built offline from a clean copy (an in-tree build/ could carry stale files)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=ignore)
        else:
            shutil.copy2(origin, source / name)
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(source)], cwd=out)
    (built,) = out.glob("api_recovery-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the checkout with only the wheel installed; the dependencies come from
    this test's own site-packages (a .pth line, so none of its .pth hooks, such as the editable
    install's finder, run there)."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root)
    python = root / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                  cwd=root).stdout.strip()
    Path(purelib, "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], cwd=root)
    return root


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def outside_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything pointing back at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PYTHONSAFEPATH": "1", **extra}


def checkout_packages() -> set[str]:
    return {str(init.parent.relative_to(REPO)) for top in ("recovery", "tasks")
            for init in (REPO / top).rglob("__init__.py") if "__pycache__" not in init.parts}


def test_the_wheel_holds_every_package_the_migrations_and_the_lua_scripts(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = {f"{package}/__init__.py" for package in checkout_packages()} - names
    assert not missing, f"packages left out of the wheel (add them to setup.cfg): {missing}"
    lua = {str(path.relative_to(REPO)) for path in (REPO / "recovery").rglob("*.lua")}
    assert lua and lua <= names
    revisions = {f"recovery_migrations/versions/{path.name}"
                 for path in (REPO / "migrations" / "versions").glob("[0-9]*.py")}
    assert revisions and revisions <= names
    assert {"recovery_migrations/env.py", "recovery_migrations/alembic.ini",
            "recovery_migrations/script.py.mako", "recovery/py.typed"} <= names


def test_the_installed_cli_migrates_a_fresh_database_from_any_directory(
        venv: Path, empty_database: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = outside_env(DATABASE_URL=empty_database, LOG_LEVEL="warning")
    where = run([str(venv / "bin" / "python"), "-c",
                 "import recovery, recovery_migrations; "
                 "print(recovery.__file__); print(recovery_migrations.__file__)"],
                cwd=elsewhere, env=env).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where

    done = run([str(venv / "bin" / "recovery-cli"), "db", "upgrade"], cwd=elsewhere, env=env)
    assert done.stdout.strip() == "Database upgraded to head."
    with psycopg.connect(empty_database) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        (head,) = conn.execute("SELECT version_num FROM alembic_version").fetchone() or ("",)
    assert tables >= {*Base.metadata.tables, "alembic_version"}
    newest = max(p.name.split("_")[0] for p in (REPO / "migrations" / "versions").glob("0*.py"))
    assert head == newest


def test_the_installed_cli_reports_its_distribution_version(venv: Path, tmp_path: Path) -> None:
    metadata = configparser.ConfigParser()
    metadata.read(REPO / "setup.cfg")
    done = run([str(venv / "bin" / "recovery-cli"), "--version"], cwd=tmp_path,
               env=outside_env())
    assert done.stdout == f"recovery-cli {metadata['metadata']['version']}\n"
