"""Why the database did not take audit writes, and whether the rows may be dropped.

An error that passes (the database is down, in a failover, missing a privilege or a table)
keeps the rows for a later try; only an error in the data itself (SQLSTATE classes 22 and 23)
or an op that cannot be built at all drops a row, and `recovery.audit.bounds` keeps those.
"""

from __future__ import annotations

import psycopg
from sqlalchemy import exc as sa_exc

from recovery.audit.ops import DatabaseUnavailable
from recovery.core.redact import redact_text

__all__ = ["DatabaseUnavailable", "describe", "is_data_error", "is_kept", "is_unavailable",
           "sqlstate"]


#: SQLSTATE classes of errors that pass: connection (08), transaction state such as a read-only
#: standby (25), rollbacks such as deadlocks (40), access and schema (42: a revoked privilege, a
#: table a migration has not made yet), resources (53), operator intervention (57), system (58).
PASSING_SQLSTATE_CLASSES = frozenset({"08", "25", "40", "42", "53", "57", "58"})
#: SQLSTATE classes of errors in the data itself (22: data exception, 23: integrity): writing
#: the same row again can never succeed.
DATA_SQLSTATE_CLASSES = frozenset({"22", "23"})


def _cause(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, sa_exc.StatementError) and exc.orig is not None else exc


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL sent with ``exc``, if any."""
    code = getattr(_cause(exc), "sqlstate", None)
    return code if isinstance(code, str) else None


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database could not be reached, not that the data was bad."""
    if isinstance(exc, DatabaseUnavailable | psycopg.OperationalError | psycopg.InterfaceError
                  | sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def is_refused_for_now(exc: BaseException) -> bool:
    """True when the database answered but refused for a reason that passes (see
    PASSING_SQLSTATE_CLASSES): the same write succeeds once an operator or a failover fixed it."""
    code = sqlstate(exc)
    return code is not None and code[:2] in PASSING_SQLSTATE_CLASSES


def is_data_error(exc: BaseException) -> bool:
    """True when the rows themselves are invalid (SQLSTATE classes 22 and 23, or the
    equivalent on SQLite): the write can never succeed."""
    code = sqlstate(exc)
    if code is not None:
        return code[:2] in DATA_SQLSTATE_CLASSES
    return isinstance(_cause(exc), psycopg.DataError | psycopg.IntegrityError
                      | sa_exc.DataError | sa_exc.IntegrityError) or isinstance(
        exc, sa_exc.DataError | sa_exc.IntegrityError)


def is_kept(exc: BaseException) -> bool:
    """True when ops the database did not take must be kept and written again later: every
    database error except one in the data. Only data errors and errors raised before the
    database saw the ops (a malformed op) drop rows."""
    if is_unavailable(exc) or is_refused_for_now(exc):
        return True
    return isinstance(_cause(exc), psycopg.Error) and not is_data_error(exc)


def describe(exc: BaseException) -> str:
    """A short, secret-free description: the driver's message, without SQL or bound values."""
    cause = _cause(exc)
    try:
        return redact_text(str(cause).strip())[:500]
    except Exception:
        return type(cause).__name__
