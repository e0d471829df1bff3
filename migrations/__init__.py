"""The audit trail's Alembic migrations, installed as the `recovery_migrations` package.

`recovery.audit.db` finds this folder through that package (importlib.resources), so
`recovery-cli db upgrade` works from any directory once the wheel is installed.
"""
