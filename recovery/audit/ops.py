"""Audit writes as plain data: the `Op` value, its JSON form, its ordering and its keys.

Nothing here touches a database: a producer builds its "queued" op and hands it to the Redis
spool (`recovery.audit.stream`) without loading SQLAlchemy; `recovery.audit.sql` writes ops.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from recovery.core.redact import policy_for, redact_params, redact_url

OP_KINDS = frozenset({"job_queued", "job_started", "job_status", "attempt"})


class DatabaseUnavailable(RuntimeError):
    """The database did not take the writes for a reason that passes: it is down, restarting
    or unreachable (`refused` False), or it answered but refused them for now: read-only
    during a failover, a missing privilege or table (`refused` True, `sqlstate` says which).
    Nothing was written; writing the same ops again later is safe."""

    def __init__(self, message: str, *, sqlstate: str | None = None,
                 refused: bool = False) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.refused = refused


@dataclass(frozen=True)
class Rejected:
    """An op the database can never take (its data is invalid for the schema), and why."""

    op: Op
    error: str
    sqlstate: str | None


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


def job_values(integration: str, method: str, path: str, params: Mapping[str, Any] | None,
               idempotency_key: str | None, now: str) -> dict[str, Any]:
    """The request details a job row holds, redacted (`params` by the integration's policy)."""
    return {
        "integration": integration,
        "method": method.upper(),
        "path": redact_url(path),
        "params": redact_params(params or {}, policy_for(integration)),
        "idempotency_key": idempotency_key,
        "now": now,
    }


def queued_op(job_id: str, integration: str, method: str, path: str,
              params: Mapping[str, Any] | None, idempotency_key: str | None, *,
              now: datetime, seq: int | None = None, replay_count: int = 0) -> Op:
    """The "queued" write for a job the producer (or a replay) enqueued."""
    values = job_values(integration, method, path, params, idempotency_key, utc_iso(now))
    return Op("job_queued", job_id, next_seq() if seq is None else seq,
              {**values, "replay_count": replay_count})
