"""Audit writes as data: `Op`, one JSON-ready write (job_queued, job_started, job_status,
attempt), already redacted, and what makes writing one twice harmless: ``seq`` (`next_seq`)
orders a job's writes, and every attempt carries a unique ``dedupe_key`` (`new_dedupe_key`).
Ops travel as JSON (`encode_ops`, `decode_ops`) through the Redis spool. Writing them is
`recovery.audit.sql`.
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

OP_KINDS = frozenset({"job_queued", "job_started", "job_status", "attempt"})


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
