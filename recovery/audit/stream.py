"""The Redis stream ``{prefix}audit:spool`` where audit ops wait for PostgreSQL.

`RedisSpool` appends ops (one entry per commit, capped: `recovery.audit.bounds`) and drains them
oldest first under a Redis lock. It never touches the database itself: the drain is handed a
`write` callable (`recovery.audit.spool.AuditBatcher` passes one), so a producer can append its
"queued" op without loading SQLAlchemy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from recovery.audit.bounds import APPEND, DEFAULT_MAX_ENTRIES, RejectedRows, SpoolAlarm
from recovery.audit.ops import DatabaseUnavailable, Op, decode_ops, encode_ops
from recovery.state.connection import is_cluster
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
        spool = "{spool}" if is_cluster(client) else "spool"
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
