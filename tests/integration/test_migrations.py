"""Alembic migrations of the audit trail on a fresh PostgreSQL database and on a SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text

from recovery.audit import db
from recovery.audit.models import Attempt, Base, Job
from tests.integration._db import AUDIT_TABLES, database, postgres_database

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path) as url:
        yield url


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _schema_drift(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_upgrade_creates_every_table_and_downgrade_removes_them(empty_url: str) -> None:
    assert _tables(empty_url) == set()

    db.upgrade(empty_url)
    assert _tables(empty_url) == AUDIT_TABLES | {"alembic_version"}

    db.downgrade(empty_url)
    assert _tables(empty_url) - {"alembic_version"} == set()

    db.upgrade(empty_url)
    assert _tables(empty_url) >= AUDIT_TABLES


def test_migration_matches_the_models(empty_url: str) -> None:
    db.upgrade(empty_url)
    engine = db.make_engine(empty_url)
    try:
        assert _schema_drift(engine) == []
        indexes = {index["name"] for index in inspect(engine).get_indexes("jobs")}
        assert {"ix_jobs_integration_status", "ix_jobs_status_updated_at"} <= indexes
        assert "ix_jobs_idempotency_key" in indexes
    finally:
        engine.dispose()


def test_deleting_a_job_cascades_to_its_attempts(empty_url: str) -> None:
    db.upgrade(empty_url)
    engine = db.make_engine(empty_url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                Job.__table__.insert().values(
                    id="j1",
                    integration="api",
                    method="GET",
                    path="/",
                    params={},
                    status="queued",
                    first_seen_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                Attempt.__table__.insert().values(
                    job_id="j1",
                    number=1,
                    kind="call",
                    started_at=now,
                    error_categories=[],
                    decision="done",
                )
            )
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = 'j1'"))
        with engine.connect() as conn:
            assert conn.execute(select(Attempt.__table__)).all() == []
    finally:
        engine.dispose()


def test_alembic_command_line_uses_database_url_from_the_environment() -> None:
    with postgres_database() as url:
        env = {**os.environ, "DATABASE_URL": url}
        alembic = [sys.executable, "-m", "alembic", "-c", "migrations/alembic.ini"]
        done = subprocess.run(
            [*alembic, "upgrade", "head"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert _tables(url) >= AUDIT_TABLES

        current = subprocess.run(
            [*alembic, "current"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "0004 (head)" in current.stdout


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/d", "postgresql+psycopg://u@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
    ],
)
def test_urls_are_pinned_to_psycopg_3(given: str, expected: str) -> None:
    assert db.normalise_url(given).render_as_string(hide_password=False) == expected


def test_a_malformed_url_gets_a_sentence_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL is not a valid database URL"):
        db.make_engine("not a url")


def test_migrations_config_keeps_percent_encoded_passwords() -> None:
    config = db.migrations_config("postgresql://user:p%40ss@host/db")
    assert config.get_main_option("sqlalchemy.url") == "postgresql+psycopg://user:p%40ss@host/db"
    assert Path(config.get_main_option("script_location") or "") == REPO_ROOT / "migrations"


def test_in_memory_sqlite_is_one_database_shared_across_threads() -> None:
    engine = db.make_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (7)"))

        def read() -> int:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT x FROM t")).scalar_one())

        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(read).result(timeout=30) == 7
    finally:
        engine.dispose()
