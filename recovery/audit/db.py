"""Database engines and Alembic migrations for the audit trail.

The audit trail runs on PostgreSQL through psycopg 3 in production and on a SQLite file for the
demo, so everything here accepts either URL and hides the driver details from callers.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

#: The package the wheel installs the top-level migrations/ folder as (see setup.cfg).
MIGRATIONS_PACKAGE = "recovery_migrations"
_CHECKOUT_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

#: Seconds psycopg waits for a TCP connection, so an unreachable database cannot hang a job.
CONNECT_TIMEOUT_S = 10

_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg"}


def normalise_url(database_url: str) -> URL:
    """Parse ``database_url`` and pin PostgreSQL URLs to the psycopg 3 driver.

    ``postgres://`` (as Heroku-style services print it) and ``postgresql://`` (which SQLAlchemy
    would otherwise map to psycopg2) both become ``postgresql+psycopg://``.
    """
    try:
        url = make_url(database_url.strip())
    except ArgumentError as exc:
        raise ValueError(
            f"DATABASE_URL is not a valid database URL: {database_url!r}. "
            "Use a URL such as postgresql://user@host:5432/dbname or sqlite:///path/to/file.db."
        ) from exc
    if url.drivername in _POSTGRES_SCHEMES:
        return url.set(drivername="postgresql+psycopg")
    return url


def make_engine(database_url: str) -> Engine:
    """Create an engine for PostgreSQL (psycopg 3) or SQLite with settings that suit workers."""
    url = normalise_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_engine(url: URL) -> Engine:
    """SQLite engine usable from several threads, with foreign keys (and cascades) enforced.

    An in-memory database lives only as long as its connection, so it gets a single shared
    connection; otherwise every checkout would see a different, empty database.
    """
    in_memory = url.database in (None, "", ":memory:")
    engine = create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"check_same_thread": False},
        poolclass=StaticPool if in_memory else None,
    )
    event.listen(engine, "connect", _enable_sqlite_foreign_keys)
    return engine


def _enable_sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def migrations_dir() -> Path:
    """The Alembic script directory, wherever the process runs from.

    Installed (wheel or editable), it is the `recovery_migrations` package. Without it (an
    editable install made before migrations were packaged, or a bare `PYTHONPATH=.`), the
    checkout's own migrations/ folder next to the `recovery` package is used.
    """
    try:
        location = Path(str(resources.files(MIGRATIONS_PACKAGE)))
    except ModuleNotFoundError:
        location = _CHECKOUT_MIGRATIONS
    if not (location / "env.py").is_file():
        raise RuntimeError(
            f"The audit-trail migrations are missing (no env.py in {location}). Reinstall "
            "api-recovery (pip install .) so that its recovery_migrations package is present."
        )
    return location


def migrations_config(database_url: str | None = None) -> Config:
    """Alembic configuration for ``migrations/``.

    With ``database_url`` the migrations run against it; without one, ``migrations/env.py``
    falls back to ``DATABASE_URL`` from the settings. Logging configuration from alembic.ini
    is skipped so that running migrations from code leaves the application's logging alone.
    """
    location = migrations_dir()
    config = Config(str(location / "alembic.ini"))
    config.set_main_option("script_location", str(location))
    if database_url is not None:
        rendered = normalise_url(database_url).render_as_string(hide_password=False)
        # ConfigParser interpolates '%', which can appear in URL-encoded passwords.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (all of them by default)."""
    command.upgrade(migrations_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Revert migrations down to ``revision`` (everything by default)."""
    command.downgrade(migrations_config(database_url), revision)
