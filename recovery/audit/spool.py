"""Where audit writes wait: a per-process buffer flushed in batches, and a Redis stream.

`AuditBatcher` buffers ops in memory and a background thread writes them, by size (500 ops)
or by time (every 200 ms), in one transaction per batch. When PostgreSQL does not answer, the
batch goes to `RedisSpool` (the stream ``{prefix}audit:spool``) and jobs keep running; while the
stream holds anything, new batches join its tail, so the database later receives rows in the
order they were produced. The same thread drains the stream, oldest entry first, whenever the
database answers: one process at a time (a Redis lock), deleting entries only after the
transaction that wrote them has committed. With Redis away too, ops stay in a bounded memory
buffer and every such moment is logged as an error.

A process killed with SIGKILL loses what it had buffered and not yet flushed (at most one flush
interval); a clean exit flushes (`close_all`, run at exit and on Celery's process shutdown).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from sqlalchemy import Engine

from recovery.audit.batch import DatabaseUnavailable, Op, decode_ops, encode_ops, write_batch

log = structlog.get_logger(__name__)

OPS_PER_ENTRY = 500
ENTRIES_PER_READ = 20
LOCK_TTL_MS = 30_000
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end " \
           "return 0"


class SpoolUnavailable(RuntimeError):
    """Redis did not take or give back spooled ops."""


@dataclass(frozen=True)
class Drained:
    written: int
    orphans: list[Op]


class RedisSpool:
    """The Redis stream that holds audit ops while the database is away."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self._client = client
        self.key = f"{key_prefix}audit:spool"
        self.lock_key = f"{key_prefix}audit:spool:lock"

    def append(self, ops: Sequence[Op]) -> None:
        """Add ops at the tail, in order (one entry per 500 ops); raises SpoolUnavailable."""
        if not ops:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(ops), OPS_PER_ENTRY):
                pipe.xadd(self.key, {"ops": encode_ops(ops[start:start + OPS_PER_ENTRY])})
            pipe.execute()
        except redis.RedisError as exc:
            raise SpoolUnavailable(f"Redis refused {len(ops)} audit ops: {exc}") from exc

    def length(self) -> int:
        """Entries waiting in the stream; raises SpoolUnavailable."""
        try:
            return int(self._client.xlen(self.key))
        except redis.RedisError as exc:
            raise SpoolUnavailable(f"Redis did not answer XLEN: {exc}") from exc

    def drain(self, write: Callable[[list[Op]], list[Op]], *, max_ops: int = 2000,
              budget_s: float = 1.0) -> Drained:
        """Write spooled ops oldest first until the stream is empty or ``budget_s`` has passed.

        `write` gets at most about ``max_ops`` ops at a time and returns the orphans. Entries are
        deleted after `write` returns (it commits), so a crash in between only writes them again,
        which changes nothing. Another process draining at the same time (it holds the lock)
        makes this a no-op. Raises DatabaseUnavailable or SpoolUnavailable.
        """
        token = uuid.uuid4().hex
        try:
            if not self._client.set(self.lock_key, token, nx=True, px=LOCK_TTL_MS):
                return Drained(0, [])
        except redis.RedisError as exc:
            raise SpoolUnavailable(f"Redis did not answer the spool lock: {exc}") from exc
        written, orphans = 0, []
        deadline = time.monotonic() + budget_s
        try:
            while time.monotonic() < deadline:
                ids, ops = self._read(max_ops)
                if not ids:
                    break
                orphans.extend(write(ops))
                self._client.xdel(self.key, *ids)
                self._client.pexpire(self.lock_key, LOCK_TTL_MS)
                written += len(ops)
        except redis.RedisError as exc:
            raise SpoolUnavailable(f"Redis failed while draining the audit spool: {exc}") from exc
        finally:
            self._release(token)
        return Drained(written, orphans)

    def _read(self, max_ops: int) -> tuple[list[bytes], list[Op]]:
        ids: list[bytes] = []
        ops: list[Op] = []
        entries: Any = self._client.xrange(self.key, "-", "+", count=ENTRIES_PER_READ)
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
        return ids, ops

    def _release(self, token: str) -> None:
        try:
            self._client.eval(_RELEASE, 1, self.lock_key, token)
        except redis.RedisError:
            log.warning("audit_spool_lock_not_released", key=self.lock_key)


class AuditBatcher:
    """Buffers audit ops and writes them in batches from a background thread (see module doc).

    `submit` never blocks on I/O and never raises. Orphans (ops whose job row is not written
    yet, see `recovery.audit.batch.split_orphans`) are tried again with every flush for
    ``orphan_max_age_s``, then logged (``audit_orphan_dropped``) and dropped.
    """

    def __init__(self, engine: Engine, spool: RedisSpool | None = None, *, max_rows: int = 500,
                 interval_s: float = 0.2, max_buffer: int = 100_000,
                 orphan_max_age_s: float = 120.0, max_backoff_s: float = 1.0) -> None:
        self._engine = engine
        self._spool = spool
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
        self._cycle_lock = threading.Lock()
        self._pending: deque[Op] = deque()
        self._carry: list[Op] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._degraded_logged_at = 0.0
        self._spool_logged_at = 0.0
        self.counts = {"written": 0, "spooled": 0, "drained": 0, "dropped": 0}

    def submit(self, op: Op) -> bool:
        """Buffer one op; False only if something unexpected went wrong (it is logged)."""
        try:
            if os.getpid() != self._pid:  # a forked child: the parent flushes its own ops
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
                self._cycle(force=True)
            return True
        except Exception as exc:
            log.warning("audit_write_failed", table=op.kind, error=str(exc),
                        error_type=type(exc).__name__, job_id=op.job_id)
            return False

    def buffered(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._carry)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write (or spool) everything buffered now; True when nothing is left in memory
        except orphans still waiting for their job row."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._cycle(force=True)
            with self._cond:
                left = len(self._pending)
            if left == 0 or time.monotonic() >= deadline:
                return left == 0
            time.sleep(min(0.05, self.interval_s))

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush, stop the thread, and spool what could not be written (orphans included)."""
        if os.getpid() != self._pid:
            return True
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        done = self.flush(timeout_s)
        with self._cycle_lock, self._cond:
            left = list(self._carry) + list(self._pending)
            self._carry.clear()
            self._pending.clear()
        if left and not self._try_spool(left):
            log.error("audit_ops_lost", count=len(left),
                      why="Neither the database nor the Redis spool took them at shutdown.")
            return False
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closing and len(self._pending) < self.max_rows:
                    self._cond.wait(self.interval_s)
                if self._closing:
                    return
            try:
                self._cycle(force=False)
            except Exception as exc:  # the thread must outlive any surprise
                log.error("audit_batcher_error", error=str(exc), error_type=type(exc).__name__)

    def _cycle(self, *, force: bool) -> None:
        """One flush: spool if the stream has a backlog, else write; then drain the stream."""
        with self._cycle_lock:
            with self._cond:
                ops = self._carry + list(self._pending)
                self._carry, self._pending = [], deque()
            backlog = self._backlog()
            if backlog and ops and self._try_spool(ops):
                ops = []
            for start in range(0, len(ops), self.max_rows):
                if not self._write(ops[start:start + self.max_rows], force):
                    self._spool_or_keep(ops[start:])
                    break
            if backlog:
                self._drain(force)

    def _backlog(self) -> bool:
        if self._spool is None:
            return False
        try:
            return self._spool.length() > 0
        except SpoolUnavailable:
            return False

    def _write(self, ops: list[Op], force: bool) -> bool:
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            orphans = write_batch(self._engine, ops)
        except DatabaseUnavailable as exc:
            self._failed(exc)
            return False
        self._recovered()
        self.counts["written"] += len(ops) - len(orphans)
        self._keep_orphans(orphans)
        return True

    def _drain(self, force: bool) -> None:
        if self._spool is None or (not force and time.monotonic() < self._retry_at):
            return
        try:
            drained = self._spool.drain(lambda ops: write_batch(self._engine, ops))
        except DatabaseUnavailable as exc:
            self._failed(exc)
            return
        except SpoolUnavailable as exc:
            log.error("audit_spool_unavailable", error=str(exc))
            return
        if drained.written:
            self._recovered()
            self.counts["drained"] += drained.written
            log.info("audit_spool_drained", ops=drained.written, orphans=len(drained.orphans))
        self._keep_orphans(drained.orphans)

    def _spool_or_keep(self, ops: list[Op]) -> None:
        if self._try_spool(ops):
            return
        with self._cond:
            self._pending.extendleft(reversed(ops))
            if len(self._pending) > self.max_buffer:
                self._drop_oldest(len(self._pending) - self.max_buffer)
            buffered = len(self._pending)
        now = time.monotonic()
        if now - self._degraded_logged_at >= 5.0:
            self._degraded_logged_at = now
            log.error("audit_buffering_in_memory", buffered=buffered, limit=self.max_buffer,
                      why="The database and the Redis spool are both unavailable; audit rows "
                          "wait in this process's memory and are lost if it dies.")

    def _try_spool(self, ops: list[Op]) -> bool:
        if self._spool is None:
            return False
        try:
            self._spool.append(ops)
        except SpoolUnavailable as exc:
            now = time.monotonic()
            if now - self._spool_logged_at >= 5.0:
                self._spool_logged_at = now
                log.error("audit_spool_unavailable", error=str(exc), ops=len(ops))
            return False
        self.counts["spooled"] += len(ops)
        return True

    def _keep_orphans(self, orphans: list[Op]) -> None:
        now = time.time()
        keep = [op for op in orphans if now - op.born < self.orphan_max_age_s]
        for op in orphans:
            if now - op.born >= self.orphan_max_age_s:
                log.error("audit_orphan_dropped", kind=op.kind, job_id=op.job_id,
                          why="Its job row never reached the audit trail.")
        self.counts["dropped"] += len(orphans) - len(keep)
        with self._cond:
            self._carry.extend(keep)

    def _drop_oldest(self, count: int) -> None:
        """Called with the condition held: the buffer is full, the oldest ops go."""
        for _ in range(count):
            self._pending.popleft()
        self.counts["dropped"] += count
        log.error("audit_ops_dropped", count=count, limit=self.max_buffer,
                  why="The in-memory audit buffer is full (database and spool unavailable).")

    def _failed(self, exc: DatabaseUnavailable) -> None:
        if self._backoff_s == 0.0:
            log.error("audit_database_unavailable", error=str(exc),
                      spool="redis" if self._spool is not None else "memory")
        self._backoff_s = min(self.max_backoff_s, max(self.interval_s, self._backoff_s * 2))
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


def close_all(timeout_s: float = 10.0) -> None:
    """Flush and stop every batcher of this process (at exit, on Celery process shutdown)."""
    for batcher in list(_live):
        batcher.close(timeout_s)


atexit.register(close_all)
