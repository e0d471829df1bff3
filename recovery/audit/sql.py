"""Audit writes as data (`Op`), and writing a batch of them in one transaction.

The four writes every delivery makes (job_queued, job_started, job_status, attempt) become an
`Op`: plain JSON-ready data, already redacted, so one op can be written at once, buffered and
written in a batch, or parked in the Redis spool and replayed later. Writing an op twice changes
nothing: attempts carry a unique ``dedupe_key`` (ON CONFLICT DO NOTHING), and every job write
carries ``seq``, a per-process monotonic sequence stored in ``jobs.status_seq``, so a write
never overwrites a newer one, whatever order the two reach the database in.

On PostgreSQL a batch runs as a few set-based statements over unnest(...) arrays: job writes in
rounds (`rounds`), then every attempt in one INSERT. Attempts commute with job writes (they only
need the job row to exist), so this stores what writing one op at a time in order would. Other
databases (SQLite, for the demo) run the SQLAlchemy statements one by one.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from sqlalchemy import Connection, Engine, Executable, Table, and_, case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from recovery.audit.failures import (
    DatabaseUnavailable,
    describe,
    is_kept,
    is_unavailable,
    sqlstate,
)
from recovery.audit.models import TERMINAL_STATUSES, Attempt, Job

log = structlog.get_logger(__name__)

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]

OP_KINDS = frozenset({"job_queued", "job_started", "job_status", "attempt"})
CREATES_JOB = frozenset({"job_queued", "job_started"})
JOB_STATUS_FIELDS = ("attempts", "deferrals", "outcome", "strategy", "fallback_used",
                     "last_status", "last_error")
ATTEMPT_COLUMNS = ("job_id", "number", "kind", "started_at", "duration_ms", "http_status",
                   "error_categories", "retryable", "error_message", "decision", "delay_ms",
                   "delay_source", "strategy", "worker", "task_id", "dedupe_key")
_TERMINAL_SQL = ", ".join(f"'{status.value}'" for status in sorted(TERMINAL_STATUSES))


@dataclass(frozen=True)
class Rejected:
    """An op the database can never take (its data is invalid for the schema), and why."""

    op: Op
    error: str
    sqlstate: str | None


Reject = Callable[[list[Rejected]], None]


@dataclass(frozen=True)
class Op:
    """One audit write. ``values`` is JSON-ready: times are ISO 8601 strings in UTC."""

    kind: str
    job_id: str
    seq: int
    values: Mapping[str, Any]
    born: float = field(default_factory=time.time)  # when made; bounds how long an orphan waits

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind, "j": self.job_id, "s": self.seq, "v": dict(self.values),
                "b": self.born}

    @classmethod
    def from_json(cls, data: Any) -> Op:
        """Rebuild an op from `to_json` output; ValueError names what is wrong."""
        try:
            op = cls(kind=data["k"], job_id=data["j"], seq=data["s"], values=data["v"],
                     born=float(data["b"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"A spooled audit op is malformed ({exc!r}); it is skipped.") from exc
        if (op.kind not in OP_KINDS or not isinstance(op.job_id, str)
                or not isinstance(op.seq, int) or not isinstance(op.values, dict)):
            raise ValueError(f"A spooled audit op is malformed: kind {op.kind!r}; it is skipped.")
        return op


def encode_ops(ops: Iterable[Op]) -> str:
    return json.dumps([op.to_json() for op in ops], separators=(",", ":"))


def decode_ops(payload: str | bytes) -> list[Op]:
    """The ops of one spool entry; ValueError when the entry is not a list of ops."""
    try:
        items = json.loads(payload)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"A spooled audit entry is not JSON ({exc}); it is skipped.") from exc
    if not isinstance(items, list):
        raise ValueError("A spooled audit entry is not a list of ops; it is skipped.")
    return [Op.from_json(item) for item in items]


_seq_lock = threading.Lock()
_last_seq = 0


def next_seq() -> int:
    """Microseconds since the epoch, strictly increasing within this process.

    Deliveries of one job are milliseconds apart at least (a broker round trip), so on one
    host, and across hosts whose clocks agree to within that, later writes get larger numbers.
    """
    global _last_seq
    with _seq_lock:
        _last_seq = max(time.time_ns() // 1000, _last_seq + 1)
        return _last_seq


_key_lock = threading.Lock()
_key_state: tuple[int, str, Iterator[int]] = (0, "", iter(()))


def new_dedupe_key() -> str:
    """A key no other attempt has: a random prefix per process and a counter.

    Cheaper than a uuid4 per row; the prefix is drawn again in a forked child.
    """
    global _key_state
    with _key_lock:
        pid, prefix, counter = _key_state
        if pid != os.getpid():
            _key_state = pid, prefix, counter = os.getpid(), uuid.uuid4().hex, itertools.count()
        return f"{prefix}-{next(counter)}"


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC; a naive datetime is taken to be UTC already."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat()


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value)


# SQLAlchemy statements: every dialect; the only path on SQLite and for single writes.


def dialect_insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ON CONFLICT on this connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(
        f"The audit trail supports PostgreSQL and SQLite, not {conn.dialect.name}. "
        "Point DATABASE_URL at a PostgreSQL or SQLite database.")


def _new_job_row(op: Op, status: str, attempts: int, replay_count: int) -> dict[str, Any]:
    v, now = op.values, _when(op.values["now"])
    return {"id": op.job_id, "integration": v["integration"], "method": v["method"],
            "path": v["path"], "params": v["params"], "idempotency_key": v["idempotency_key"],
            "status": status, "attempts": attempts, "deferrals": 0, "replay_count": replay_count,
            "first_seen_at": now, "updated_at": now, "status_seq": op.seq}


def _queued_statement(conn: Connection, op: Op) -> Executable:
    """Create the row; on a replay (higher replay_count) queue a finished job again, unless a
    newer write already moved it on."""
    row = _new_job_row(op, "queued", 0, op.values["replay_count"])
    stmt = dialect_insert(conn, _JOBS).values(row)
    new = stmt.excluded
    reset = and_(_JOBS.c.status.in_([s.value for s in TERMINAL_STATUSES]),
                 _JOBS.c.status_seq <= new.status_seq)
    return stmt.on_conflict_do_update(
        index_elements=[_JOBS.c.id],
        set_={"status": case((reset, "queued"), else_=_JOBS.c.status),
              "finished_at": case((reset, None), else_=_JOBS.c.finished_at),
              "status_seq": case((reset, new.status_seq), else_=_JOBS.c.status_seq),
              "replay_count": new.replay_count, "updated_at": new.updated_at},
        where=_JOBS.c.replay_count < new.replay_count)


def _started_statement(conn: Connection, op: Op) -> Executable:
    stmt = dialect_insert(conn, _JOBS).values(_new_job_row(op, "running", op.values["attempt"], 0))
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[_JOBS.c.id],
        set_={"status": "running", "attempts": new.attempts, "finished_at": None,
              "updated_at": new.updated_at, "status_seq": new.status_seq},
        where=_JOBS.c.status_seq <= new.status_seq)


def _status_statement(op: Op) -> Executable:
    v, now = op.values, _when(op.values["now"])
    values: dict[str, Any] = {"status": v["status"], "updated_at": now, "status_seq": op.seq}
    values.update({name: v[name] for name in JOB_STATUS_FIELDS if v.get(name) is not None})
    if v.get("finished"):
        values["finished_at"] = now
    return (update(_JOBS).where(_JOBS.c.id == op.job_id, _JOBS.c.status_seq <= op.seq)
            .values(values))


def _attempt_row(op: Op) -> dict[str, Any]:
    row = {name: op.values[name] for name in ATTEMPT_COLUMNS if name != "job_id"}
    row.update(job_id=op.job_id, started_at=_when(op.values["started_at"]))
    return row


def execute_op(conn: Connection, op: Op) -> bool:
    """Write one op. False only for a job_status whose job has no row.

    On PostgreSQL this runs the batch's own SQL for a batch of one: building and compiling the
    SQLAlchemy upsert for every row cost a producer more than half its CPU per enqueue
    (`recovery.enqueue`: 5-6 ms, now about 2). Elsewhere `execute_op_portable`. Both store the
    same (`test_audit_batch`).
    """
    if conn.dialect.name != "postgresql":
        return execute_op_portable(conn, op)
    with _pg_cursor(conn) as cursor:
        updated = _run_pg(cursor, op.kind, [op])
    if op.kind == "job_status" and updated == 0:
        return bool(_existing_ids(conn, [op.job_id]))  # no row, or a newer write won
    return True


def execute_op_portable(conn: Connection, op: Op) -> bool:
    """Write one op with SQLAlchemy statements (any dialect). False as in `execute_op`."""
    if op.kind == "job_queued":
        conn.execute(_queued_statement(conn, op))
    elif op.kind == "job_started":
        conn.execute(_started_statement(conn, op))
    elif op.kind == "job_status":
        if conn.execute(_status_statement(op)).rowcount == 0:
            return bool(_existing_ids(conn, [op.job_id]))  # no row, or a newer write won
    else:
        stmt = dialect_insert(conn, _ATTEMPTS).values(_attempt_row(op))
        conn.execute(stmt.on_conflict_do_nothing(index_elements=[_ATTEMPTS.c.dedupe_key]))
    return True


# PostgreSQL: the same writes as set-based SQL. A statement takes its rows as one JSON array
# (json_to_recordset), so the server parses them and the client only runs json.dumps.

_RESET = f"jobs.status IN ({_TERMINAL_SQL}) AND jobs.status_seq <= EXCLUDED.status_seq"
_JOB_INSERT = """INSERT INTO jobs (id, integration, method, path, params, idempotency_key,
  status, attempts, deferrals, replay_count, first_seen_at, updated_at, status_seq)
SELECT u.id, u.integration, u.method, u.path, u.params::json, u.idempotency_key, u.status,
  u.attempts, 0, u.replay_count, u.now, u.now, u.seq
FROM json_to_recordset(%s::json) AS u(id text, integration text, method text, path text,
  params text, idempotency_key text, status text, attempts integer, replay_count integer,
  now timestamptz, seq bigint)"""
PG_QUEUED = f"""{_JOB_INSERT} ON CONFLICT (id) DO UPDATE SET
  status = CASE WHEN {_RESET} THEN 'queued' ELSE jobs.status END,
  finished_at = CASE WHEN {_RESET} THEN NULL ELSE jobs.finished_at END,
  status_seq = CASE WHEN {_RESET} THEN EXCLUDED.status_seq ELSE jobs.status_seq END,
  replay_count = EXCLUDED.replay_count, updated_at = EXCLUDED.updated_at
WHERE jobs.replay_count < EXCLUDED.replay_count"""
PG_STARTED = f"""{_JOB_INSERT} ON CONFLICT (id) DO UPDATE SET
  status = 'running', attempts = EXCLUDED.attempts, finished_at = NULL,
  updated_at = EXCLUDED.updated_at, status_seq = EXCLUDED.status_seq
WHERE jobs.status_seq <= EXCLUDED.status_seq"""
_STATUS_TYPES = {"attempts": "integer", "deferrals": "integer", "last_status": "integer"}
PG_STATUS = (
    "UPDATE jobs SET status = u.status, updated_at = u.now, status_seq = u.seq, "
    + "".join(f"{name} = COALESCE(u.{name}, jobs.{name}), " for name in JOB_STATUS_FIELDS)
    + "finished_at = CASE WHEN u.finished THEN u.now ELSE jobs.finished_at END "
    "FROM json_to_recordset(%s::json) AS u(id text, seq bigint, status text, now timestamptz, "
    + "".join(f"{name} {_STATUS_TYPES.get(name, 'text')}, " for name in JOB_STATUS_FIELDS)
    + "finished boolean) WHERE jobs.id = u.id AND jobs.status_seq <= u.seq")
_ATTEMPT_TYPES = ("text", "integer", "text", "timestamptz", "integer", "integer", "json",
                  "boolean", "text", "text", "integer", "text", "text", "text", "text", "text")
PG_ATTEMPTS = (
    f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) "
    f"SELECT {', '.join(f'u.{name}' for name in ATTEMPT_COLUMNS)} "
    "FROM json_to_recordset(%s::json) AS u("
    + ", ".join(f"{name} {kind}" for name, kind in zip(ATTEMPT_COLUMNS, _ATTEMPT_TYPES,
                                                       strict=True))
    + ") ON CONFLICT (dedupe_key) DO NOTHING")


PG_SQL = {"job_queued": PG_QUEUED, "job_started": PG_STARTED, "job_status": PG_STATUS,
          "attempt": PG_ATTEMPTS}


def _pg_rows(ops: Sequence[Op]) -> str:
    """The rows of one statement as a JSON array; values are JSON-ready already.

    A job's params travel as JSON text inside the array: json_to_recordset decodes every
    string it extracts, and a NUL (\\u0000, legal in a job's params and in a json column)
    cannot be decoded to text, which would refuse the whole statement.
    """
    rows = []
    for op in ops:
        row = {**op.values, "id": op.job_id, "job_id": op.job_id, "seq": op.seq}
        if op.kind == "job_queued":
            row.update(status="queued", attempts=0)
        elif op.kind == "job_started":
            row.update(status="running", attempts=op.values["attempt"], replay_count=0)
        if "params" in row:
            row["params"] = json.dumps(row["params"])
        rows.append(row)
    return json.dumps(rows, separators=(",", ":"))


def rounds(ops: Sequence[Op]) -> list[list[Op]]:
    """Job writes split into rounds: round k holds each job's k-th write of the batch.

    Writes to different jobs commute, so one round can run as a few set-based statements;
    running the rounds in order keeps every job's own writes in order.
    """
    result: list[list[Op]] = []
    depth: dict[str, int] = {}
    for op in ops:
        level = depth.get(op.job_id, 0)
        depth[op.job_id] = level + 1
        if level == len(result):
            result.append([])
        result[level].append(op)
    return result


def _pg_cursor(conn: Connection) -> psycopg.Cursor[Any]:
    """A cursor on the psycopg connection under a SQLAlchemy PostgreSQL connection."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver.cursor()


def _run_pg(cursor: psycopg.Cursor[Any], kind: str, ops: Sequence[Op]) -> int:
    """One set-based statement for `ops` (all of `kind`); the rows it changed."""
    cursor.execute(PG_SQL[kind], (_pg_rows(ops),))
    return cursor.rowcount


def _write_pg(conn: Connection, ops: Sequence[Op]) -> None:
    with _pg_cursor(conn) as cursor:
        for level in rounds([op for op in ops if op.kind != "attempt"]):
            for kind in ("job_queued", "job_started", "job_status"):
                chosen = [op for op in level if op.kind == kind]
                if chosen:
                    _run_pg(cursor, kind, chosen)
        attempts = [op for op in ops if op.kind == "attempt"]
        if attempts:
            _run_pg(cursor, "attempt", attempts)


# A batch, in one transaction.


def _existing_ids(conn: Connection, ids: Iterable[str]) -> set[str]:
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    if conn.dialect.name == "postgresql":
        with _pg_cursor(conn) as cursor:
            cursor.execute("SELECT id FROM jobs WHERE id = ANY(%s::text[])", (wanted,))
            return {row[0] for row in cursor.fetchall()}
    return set(conn.scalars(select(_JOBS.c.id).where(_JOBS.c.id.in_(wanted))))


def split_orphans(conn: Connection, ops: Sequence[Op]) -> tuple[list[Op], list[Op]]:
    """(ops that can be written, orphans): ops whose job row does not exist yet.

    A job_status needs the row before it, an attempt anywhere in the batch (attempts are
    written last). Orphans wait for a later batch: the row may be in another process's buffer.
    """
    first_creation: dict[str, int] = {}
    for index, op in enumerate(ops):
        if op.kind in CREATES_JOB:
            first_creation.setdefault(op.job_id, index)

    def created_in_batch(index: int, op: Op) -> bool:
        at = first_creation.get(op.job_id)
        return at is not None and (op.kind in CREATES_JOB or op.kind == "attempt" or at < index)

    covered = [created_in_batch(index, op) for index, op in enumerate(ops)]
    existing = _existing_ids(conn, (op.job_id for op, ok in zip(ops, covered, strict=True)
                                    if not ok))
    ready = [op for op, ok in zip(ops, covered, strict=True) if ok or op.job_id in existing]
    orphans = [op for op, ok in zip(ops, covered, strict=True)
               if not ok and op.job_id not in existing]
    return ready, orphans


def _write(engine: Engine, ops: Sequence[Op]) -> list[Op]:
    try:
        with engine.begin() as conn:
            ready, orphans = split_orphans(conn, ops)
            if conn.dialect.name == "postgresql":
                _write_pg(conn, ready)
            else:
                for op in ready:
                    execute_op_portable(conn, op)
    except Exception as exc:
        if is_kept(exc):
            raise DatabaseUnavailable(describe(exc), sqlstate=sqlstate(exc),
                                      refused=not is_unavailable(exc)) from exc
        raise
    return orphans


def log_rejected(rejected: list[Rejected]) -> None:
    """The default `Reject`: log each op the database can never take."""
    for item in rejected:
        log.error("audit_op_rejected", kind=item.op.kind, job_id=item.op.job_id,
                  error=item.error, sqlstate=item.sqlstate)


def write_batch(engine: Engine, ops: Sequence[Op], reject: Reject = log_rejected) -> list[Op]:
    """Write ``ops`` in one transaction; returns the orphans (see `split_orphans`).

    Raises DatabaseUnavailable when the database cannot take them now (`is_kept`): writing
    the same ops again later is safe, and nothing is dropped. An op whose data the database
    refuses (a value too long for its column, say) must not hold back the rest, so a refused
    batch is written again one op at a time; each op that can never be written is handed to
    `reject` (by default logged as ``audit_op_rejected``) and dropped from the batch.
    """
    if not ops:
        return []
    try:
        return _write(engine, ops)
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        if len(ops) == 1:
            reject([Rejected(ops[0], describe(exc), sqlstate(exc))])
            return []
    orphans: list[Op] = []
    for op in ops:
        orphans.extend(write_batch(engine, [op], reject))
    return orphans
