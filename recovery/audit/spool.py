"""Where audit writes wait between a worker and PostgreSQL.

`AuditBatcher` buffers job and attempt writes (`recovery.audit.sql.Op`) in memory. At every
commit point (`commit`: a Celery task ends, before its message is acknowledged), every second,
and whenever 500 ops are waiting, the buffer moves to the Redis stream ``{prefix}audit:spool``
in one XADD. A background thread per process drains the stream into PostgreSQL every second,
oldest entry first, up to 2,000 ops per transaction, one process at a time (a Redis lock), so
rows reach PostgreSQL about a second after their job ended. It deletes
entries only after their transaction has committed. So the audit trail is as durable as the
broker (Redis too): a SIGKILLed worker loses only the writes of the delivery it was running,
whose message the broker delivers again. While PostgreSQL is away, or refuses writes for a
reason that passes (read-only during a failover, a revoked privilege: see
`recovery.audit.failures`), the stream grows and jobs keep running; the drain resumes, in
order, when it takes writes again. The stream is capped, with alerts before anything is
trimmed, and rows whose data can never be written go to a capped stream of their own
(`recovery.audit.bounds`).

Without Redis (no client, or Redis failing) the buffer is written straight to PostgreSQL in
batches; with both away it stays in a bounded memory buffer, and that is logged as an error.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from redis.cluster import RedisCluster
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock
from sqlalchemy import Engine

from recovery.audit.bounds import APPEND, DEFAULT_MAX_ENTRIES, RejectedRows, SpoolAlarm
from recovery.audit.sql import (
    DatabaseUnavailable,
    Op,
    Rejected,
    decode_ops,
    encode_ops,
    write_batch,
)
from recovery.state.scripts import ScriptCall

log = structlog.get_logger(__name__)

OPS_PER_ENTRY = 500
MAX_ENTRIES_PER_READ = 1000
LOCK_TTL_MS = 5_000


class SpoolUnavailable(RuntimeError):
    """Redis did not take or give back spooled ops."""


@dataclass(frozen=True)
class Drained:
    """What one drain did; ``error`` (DatabaseUnavailable or SpoolUnavailable) stopped it."""

    written: int
    orphans: list[Op]
    error: Exception | None = None


class RedisSpool:
    """The Redis stream that holds audit ops while the database is away, capped at
    `max_entries` (`recovery.audit.bounds`), and the stream of rows it could never write."""

    def __init__(self, client: redis.Redis, key_prefix: str, *,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._client = client
        # On a Redis Cluster the append script's two keys need one slot: the hash tag {spool}.
        spool = "{spool}" if isinstance(client, RedisCluster) else "spool"
        self.key = f"{key_prefix}audit:{spool}"
        self.lock_key = f"{key_prefix}audit:{spool}:lock"
        self.alarm_key = f"{key_prefix}audit:{spool}:alarm"
        self.max_entries = max_entries
        self.alarm = SpoolAlarm(self.key, max_entries)
        self.rejected = RejectedRows(client, key_prefix)
        self._append = client.register_script(APPEND)
        self._ops_per_entry = 100  # a guess until the first read

    def append(self, ops: Sequence[Op]) -> None:
        """Add ops at the tail, in order (one entry per 500 ops); raises SpoolUnavailable."""
        if not ops:
            return
        payloads = [encode_ops(ops[start:start + OPS_PER_ENTRY])
                    for start in range(0, len(ops), OPS_PER_ENTRY)]
        try:
            reply = self._append(keys=[self.key, self.alarm_key],
                                 args=[self.max_entries, *payloads])
        except redis.RedisError as exc:
            raise SpoolUnavailable(f"Redis refused {len(ops)} audit ops: {exc}") from exc
        self.alarm.on_reply(reply)

    def append_call(self, ops: Sequence[Op]) -> ScriptCall:
        """`append` as a script step, to ride on another round trip (`recovery.engine.gate`)."""
        return ScriptCall(APPEND, [self.key, self.alarm_key],
                          [self.max_entries, encode_ops(ops)], on_reply=self.alarm.on_reply)

    def length(self) -> int:
        """Entries waiting in the stream; raises SpoolUnavailable."""
        try:
            return int(self._client.xlen(self.key))
        except redis.RedisError as exc:
            raise SpoolUnavailable(f"Redis did not answer XLEN: {exc}") from exc

    def drain(self, write: Callable[[list[Op]], list[Op]], *, max_ops: int = 2000,
              budget_s: float = 1.0) -> Drained:
        """Write spooled ops oldest first until a read finds less than a full batch, or
        ``budget_s`` has passed.

        `write` gets at most about ``max_ops`` ops at a time, commits them and returns the
        orphans, which the caller keeps (their entries are gone). Entries are deleted only after
        `write` returns, so a crash in between writes them again, which changes nothing. A short
        read ends the pass: what arrives meanwhile waits for the next one, so busy workers'
        steady trickle is written in batches a second's worth wide, not chased one small
        transaction at a time. While another process drains (it holds the lock) this returns at
        once. A database or Redis failure ends the drain and is returned in ``error``, with the
        orphans found so far.
        """
        lock = Lock(self._client, self.lock_key, timeout=LOCK_TTL_MS / 1000, thread_local=False)
        written, orphans = 0, []
        try:
            if not lock.acquire(blocking=False):
                return Drained(0, [])
        except redis.RedisError as exc:
            return Drained(0, [], SpoolUnavailable(f"Redis did not answer the lock: {exc}"))
        deadline = time.monotonic() + budget_s
        try:
            more = True
            while more and time.monotonic() < deadline:
                ids, ops, more = self._read(max_ops)
                if not ids:
                    break
                orphans.extend(write(ops))
                self._client.xdel(self.key, *ids)
                written += len(ops)
                lock.reacquire()  # token-checked: a lock that expired is not taken back
        except LockNotOwnedError:  # another drainer may run now: leave the rest to it
            log.warning("audit_spool_lock_lost", key=self.lock_key, written=written)
            return Drained(written, orphans)
        except DatabaseUnavailable as exc:
            return Drained(written, orphans, exc)
        except redis.RedisError as exc:
            return Drained(written, orphans, SpoolUnavailable(f"Redis failed mid-drain: {exc}"))
        finally:
            self._release(lock)
        return Drained(written, orphans)

    def _read(self, max_ops: int) -> tuple[list[bytes], list[Op], bool]:
        """The oldest entries, up to about ``max_ops`` ops, and whether more may be waiting."""
        ids: list[bytes] = []
        ops: list[Op] = []
        count = max(1, min(MAX_ENTRIES_PER_READ, max_ops // self._ops_per_entry))
        entries: Any = self._client.xrange(self.key, "-", "+", count=count)
        for entry_id, fields in entries:
            try:
                entry_ops = decode_ops(fields.get(b"ops", b""))
            except ValueError as exc:
                log.error("audit_spool_entry_skipped", entry=str(entry_id), error=str(exc))
                entry_ops = []
            if ops and len(ops) + len(entry_ops) > max_ops:
                break
            ids.append(entry_id)
            ops.extend(entry_ops)
        if ids:  # entries are as small as one task's writes or as large as 500 ops
            self._ops_per_entry = max(1, len(ops) // len(ids))
        return ids, ops, len(entries) == count or len(ids) < len(entries)

    def _release(self, lock: Lock) -> None:
        try:
            lock.release()  # token-checked: never deletes another drainer's lock
        except redis.RedisError:  # LockError included: it expired, or Redis did not answer
            log.warning("audit_spool_lock_not_released", key=self.lock_key)


class AuditBatcher:
    """Buffers audit ops, moves them to the spool at commit points, drains the spool in batches.

    `submit` never blocks on I/O and never raises. `commit` is the durability point: call it
    before acknowledging the work the ops describe. Orphans (ops whose job row is not written
    yet, see `recovery.audit.sql.split_orphans`) go round again for ``orphan_max_age_s``, then
    are logged (``audit_orphan_dropped``) and dropped.
    """

    def __init__(self, engine: Engine, spool: RedisSpool | None = None, *, max_rows: int = 500,
                 interval_s: float = 1.0, max_buffer: int = 100_000,
                 orphan_max_age_s: float = 120.0, max_backoff_s: float = 1.0,
                 refused_backoff_s: float = 5.0) -> None:
        self._engine = engine
        self._spool = spool
        self._rejected = spool.rejected if spool is not None else RejectedRows(None, "")
        self.refused_backoff_s = refused_backoff_s
        self.max_rows = max_rows
        self.interval_s = interval_s
        self.max_buffer = max_buffer
        self.orphan_max_age_s = orphan_max_age_s
        self.max_backoff_s = max_backoff_s
        self._reset_state()
        _live.add(self)

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._move_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._pending: deque[Op] = deque()
        self._carry: list[Op] = []
        # Ops taken by `take_for_spool` whose round trip has not ended, under a condition of
        # their own: waking `_cond` would wake the batcher thread, which would then spool a
        # delivery's restored rows before the rest of its rows (its final status) arrive.
        self._in_flight = 0
        self._landed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._logged_at: dict[str, float] = {}
        self.counts = {"written": 0, "spooled": 0, "drained": 0, "dropped": 0, "rejected": 0}

    def submit(self, op: Op) -> bool:
        """Buffer one op; False only if something unexpected went wrong (it is logged)."""
        try:
            if os.getpid() != self._pid:  # a forked child: the parent handles its own ops
                self._reset_state()
            with self._cond:
                self._pending.append(op)
                if len(self._pending) > self.max_buffer:
                    self._drop_oldest(len(self._pending) - self.max_buffer)
                if len(self._pending) >= self.max_rows:
                    self._cond.notify()
                closing = self._closing
                if self._thread is None and not closing:
                    self._thread = threading.Thread(target=self._run, name="audit-batcher",
                                                    daemon=True)
                    self._thread.start()
            if closing:  # a write during shutdown: no thread will come for it
                self.commit()
            return True
        except Exception as exc:
            log.warning("audit_write_failed", table=op.kind, error=str(exc),
                        error_type=type(exc).__name__, job_id=op.job_id)
            return False

    def take_for_spool(self) -> tuple[list[Op], ScriptCall] | None:
        """The buffered ops and a script step that appends them to the spool, so that another
        round trip makes them durable; None without a spool or with nothing buffered. The ops
        leave the buffer: hand them to `restore` if the step did not run."""
        if self._spool is None or os.getpid() != self._pid:
            return None
        with self._cond:
            if self._carry or not self._pending or len(self._pending) > OPS_PER_ENTRY:
                return None
            ops, self._pending = list(self._pending), deque()
            self.counts["spooled"] += len(ops)
            with self._landed:
                self._in_flight += len(ops)
        return ops, self._spool.append_call(ops)

    def taken_done(self, ops: list[Op], *, spooled: bool) -> None:
        """End a `take_for_spool`: its round trip spooled `ops`, or they go back to the head of
        the buffer. Either way a `commit` waiting for them (another thread's) may go on."""
        if not spooled:
            with self._cond:
                self.counts["spooled"] -= len(ops)
                self._pending.extendleft(reversed(ops))
        with self._landed:
            self._in_flight -= len(ops)
            self._landed.notify_all()

    def restore(self, ops: list[Op]) -> None:
        """Put ops from `take_for_spool` back at the head of the buffer."""
        self.taken_done(ops, spooled=False)

    def buffered(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._carry)

    def commit(self, in_flight_timeout_s: float = 10.0) -> bool:
        """Make every buffered op durable now: one XADD to the spool or, without Redis, a write
        to the database. True when nothing is left only in this process's memory.

        Under a thread pool another job's settle round trip may have taken this job's ops
        (`take_for_spool` takes the whole buffer): commit waits for such round trips to end
        first, so that what it returns covers every op submitted before it was called.
        """
        if os.getpid() != self._pid:
            return True
        with self._landed:
            self._landed.wait_for(lambda: self._in_flight == 0, in_flight_timeout_s)
        with self._move_lock:
            return self._move(force=False)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Commit, then drain the spool into the database until it is empty (or the time is
        up). True when the buffer and the spool are empty, orphans aside."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._move_lock:
                self._move(force=True)
            self._drain(force=True)
            settled = self._settled()
            if settled or time.monotonic() >= deadline:
                return settled
            time.sleep(min(0.05, self.interval_s))

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop the thread, commit, and drain once (the spool keeps the rest for any other
        process); True when nothing is left in memory."""
        if os.getpid() != self._pid:
            return True
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._move_lock:
            self._move(force=True)
        self._drain(force=True)
        with self._move_lock:  # orphans the drain handed back go to the spool again
            self._move(force=True)
        left = self.buffered()
        if left:
            log.error("audit_ops_lost", count=left,
                      why="Neither the Redis spool nor the database took them at shutdown.")
        return left == 0

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closing and len(self._pending) < self.max_rows:
                    self._cond.wait(self.interval_s)
                if self._closing:
                    return
            try:
                with self._move_lock:
                    self._move(force=False)
                self._drain(force=False)
            except Exception as exc:  # the thread must outlive any surprise
                log.error("audit_batcher_error", error=str(exc), error_type=type(exc).__name__)

    def _settled(self) -> bool:
        with self._cond:
            if self._pending:
                return False
        try:
            return self._spool is None or self._spool.length() == 0
        except SpoolUnavailable:
            return True  # nothing can be in a spool that refuses writes: it all went direct

    def _move(self, *, force: bool) -> bool:
        """Buffered ops (orphans first) to the spool; without one, to the database."""
        with self._cond:
            ops = self._carry + list(self._pending)
            self._carry, self._pending = [], deque()
        if not ops:
            return True
        if self._spool is not None:
            try:
                self._spool.append(ops)
                self._count("spooled", len(ops))
                return True
            except SpoolUnavailable as exc:
                self._log_error("audit_spool_unavailable", error=str(exc), ops=len(ops))
        return self._write_direct(ops, force)

    def _write_direct(self, ops: list[Op], force: bool) -> bool:
        if not force and time.monotonic() < self._retry_at:
            self._keep(ops)
            return False
        for start in range(0, len(ops), self.max_rows):
            try:
                orphans = write_batch(self._engine, ops[start:start + self.max_rows],
                                      self._reject)
            except DatabaseUnavailable as exc:
                self._failed(exc)
                self._keep(ops[start:])
                return False
            self._recovered()
            self._count("written", min(self.max_rows, len(ops) - start) - len(orphans))
            self._keep_orphans(orphans)
        return True

    def _drain(self, *, force: bool) -> None:
        if self._spool is None or (not force and time.monotonic() < self._retry_at):
            return
        with self._drain_lock:
            try:
                if self._spool.length() == 0:
                    return
            except SpoolUnavailable as exc:
                self._log_error("audit_spool_unavailable", error=str(exc))
                return
            drained = self._spool.drain(self._write_keeping_the_buffer_moving)
        self._keep_orphans(drained.orphans)
        if drained.written:
            self._recovered()
            self._count("drained", drained.written)
        if isinstance(drained.error, DatabaseUnavailable):
            self._failed(drained.error)
        elif drained.error is not None:
            self._log_error("audit_spool_unavailable", error=str(drained.error))

    def _write_keeping_the_buffer_moving(self, ops: list[Op]) -> list[Op]:
        """One drain batch, after moving what was buffered meanwhile to the spool: a drain
        through a backlog can take a second, and a burst of writes must not fill the bounded
        buffer (and lose ops) while nothing else empties it."""
        with self._move_lock:
            self._move(force=False)
        return write_batch(self._engine, ops, self._reject)

    def _reject(self, rejected: list[Rejected]) -> None:
        """Ops the database can never take: kept in the rejected stream, alerted."""
        self._count("rejected", len(rejected))
        self._rejected.put(rejected)

    def _keep(self, ops: list[Op]) -> None:
        """Put ops back at the head of the buffer: neither Redis nor the database took them."""
        with self._cond:
            self._pending.extendleft(reversed(ops))
            if len(self._pending) > self.max_buffer:
                self._drop_oldest(len(self._pending) - self.max_buffer)
            buffered = len(self._pending)
        self._log_error("audit_buffering_in_memory", buffered=buffered, limit=self.max_buffer,
                        why="The database and the Redis spool are both unavailable; audit rows "
                            "wait in this process's memory and are lost if it dies.")

    def _keep_orphans(self, orphans: list[Op]) -> None:
        now = time.time()
        keep = [op for op in orphans if now - op.born < self.orphan_max_age_s]
        for op in orphans:
            if now - op.born >= self.orphan_max_age_s:
                log.error("audit_orphan_dropped", kind=op.kind, job_id=op.job_id,
                          why="Its job row never reached the audit trail.")
        with self._cond:
            self.counts["dropped"] += len(orphans) - len(keep)
            self._carry.extend(keep)

    def _drop_oldest(self, count: int) -> None:
        """Called with the condition held: the buffer is full, the oldest ops go."""
        for _ in range(count):
            self._pending.popleft()
        self.counts["dropped"] += count
        log.error("audit_ops_dropped", count=count, limit=self.max_buffer,
                  why="The in-memory audit buffer is full (database and spool unavailable).")

    def _count(self, name: str, amount: int) -> None:
        """Counters are shared by the job threads and the batcher thread."""
        with self._cond:
            self.counts[name] += amount

    def _log_error(self, event: str, **details: Any) -> None:
        """Log an error at most every 5 s per event: loud, but not once per op."""
        now = time.monotonic()
        if now - self._logged_at.get(event, -60.0) >= 5.0:
            self._logged_at[event] = now
            log.error(event, **details)

    def _failed(self, exc: DatabaseUnavailable) -> None:
        """Wait before the next try, doubling the wait. A database that answers but refuses
        (read-only, a missing privilege or table) needs a person or a failover, so it is tried
        less often than one that is restarting."""
        kept = "redis" if self._spool is not None else "memory"
        if self._backoff_s == 0.0 and exc.refused:
            log.error("audit_database_refused", error=str(exc), sqlstate=exc.sqlstate,
                      spool=kept, why="PostgreSQL refuses audit writes for a reason that "
                      "passes; the rows are kept and written once it takes them again.")
        elif self._backoff_s == 0.0:
            log.error("audit_database_unavailable", error=str(exc), spool=kept)
        cap = self.refused_backoff_s if exc.refused else self.max_backoff_s
        self._backoff_s = min(cap, max(self.interval_s, self._backoff_s * 2))
        self._retry_at = time.monotonic() + self._backoff_s

    def _recovered(self) -> None:
        if self._backoff_s:
            log.warning("audit_database_back")
        self._backoff_s, self._retry_at = 0.0, 0.0


_live: weakref.WeakSet[AuditBatcher] = weakref.WeakSet()
_batching = False


def enable_batching(enabled: bool = True) -> None:
    """Make `recovery.audit.writer.make_audit_writer` batch in this process (Celery workers)."""
    global _batching
    _batching = enabled


def batching_enabled() -> bool:
    return _batching


def commit_all() -> None:
    """Make this process's buffered audit ops durable (Celery: when a task ends, before ack)."""
    for batcher in list(_live):
        batcher.commit()


def close_all(timeout_s: float = 10.0) -> None:
    """Commit and stop every batcher of this process (at exit, on Celery process shutdown)."""
    for batcher in list(_live):
        batcher.close(timeout_s)


atexit.register(close_all)
