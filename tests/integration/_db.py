"""Throwaway databases for the audit-trail tests: a fresh PostgreSQL database or SQLite file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from recovery.audit.db import normalise_url

PG_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AUDIT_TABLES = frozenset(
    {"jobs", "attempts", "breaker_transitions", "health_checks", "dead_letters", "alerts",
     "dead_letter_archive", "workflow_runs", "step_runs"}
)


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create database ``t_<hex>``, yield its URL, and drop it (even if connections remain)."""
    name = f"t_{uuid.uuid4().hex}"
    admin_url = normalise_url(PG_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def database(backend: str, directory: Path) -> Iterator[str]:
    """An empty database of ``backend`` ("postgresql" or "sqlite"); yields its URL."""
    if backend == "postgresql":
        with postgres_database() as url:
            yield url
    elif backend == "sqlite":
        path = directory / f"audit-{uuid.uuid4().hex}.sqlite3"
        try:
            yield f"sqlite:///{path}"
        finally:
            path.unlink(missing_ok=True)
    else:
        raise ValueError(f"Unknown test database backend {backend!r}.")
