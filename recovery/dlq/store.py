"""The DLQ's broker queues read in place: list, find, remove one entry, publish, lock.

`dlq` and `dlq.quarantine` are Redis lists that kombu writes (LPUSH: the newest entry at the
head, the oldest at the tail). We never consume them through a kombu consumer: a kombu `get`
pops the oldest message before it records it as unacknowledged, and a rejected message is pushed
back at the *newest* end, so filtering with get/reject would reorder the queue (or loop on one
entry). Instead the list is read where it lies (LRANGE from the tail, oldest first) and an entry
is removed by its exact bytes (LREM) only after it was published elsewhere. Entries nobody
touches keep their place; a crash between publish and removal leaves a duplicate, never a loss.
What the quarantine list holds is `recovery.dlq.quarantine`'s.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import structlog
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from recovery.celery_base import app
from recovery.config.queues import DLQ_QUEUE
from recovery.core.crypto import task_serializer
from recovery.core.message import (
    TASK_NAME,
    JobSpec,
    MalformedJobError,
    Progress,
    parse_time,
    task_reprs,
)
from recovery.core.redact import (
    policy_for,
    redact_body,
    redact_headers,
    redact_params,
    redact_text,
)
from recovery.dlq.context import DlqRuntime
from recovery.dlq.envelope import Envelope

log = structlog.get_logger(__name__)

READ_CHUNK = 500
LOCK_TTL_MS = 60_000
#: How `recovery.engine.pipeline` starts the message of a job dead-lettered as a poison message.
POISON_PREFIX = "poison:"


class DlqBusyError(RuntimeError):
    """Another replay, purge or release holds the DLQ lock."""


class DlqUnavailableError(RuntimeError):
    """This process has no Redis client, so it cannot reach the DLQ."""


@dataclass(frozen=True)
class Entry:
    """One list element: its exact bytes (to remove it later) and what they decode to.

    `data` is the decoded message body (None when even that failed); `envelope` is set for a
    well-formed dead letter, `problem` says why it is not one.
    """

    raw: bytes
    data: Any
    envelope: Envelope | None
    problem: str | None

    @property
    def job_id(self) -> str | None:
        if self.envelope is not None:
            return self.envelope.job_id
        found = self.data.get("job_id") if isinstance(self.data, dict) else None
        return found if isinstance(found, str) else None


def decode_body(raw: bytes) -> tuple[Any, str | None]:
    """The JSON body of one kombu Redis message, or (None, why it cannot be read)."""
    try:
        payload = json.loads(raw)
    except ValueError:
        return None, "The entry is not JSON; it was not written by kombu."
    if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
        return None, "The entry is JSON but not a kombu message (no string 'body')."
    properties = payload.get("properties")
    body: str | bytes = payload["body"]
    if isinstance(properties, dict) and properties.get("body_encoding") == "base64":
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return None, "The message body is not valid base64."
    if payload.get("content-type", "application/json") != "application/json":
        return None, f"The message is {payload.get('content-type')!r}, not JSON."
    try:
        return json.loads(body), None
    except ValueError:
        return None, "The message body is broken JSON."


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "job_id": (str,), "task_name": (str,), "integration": (str,), "method": (str,),
    "path": (str,), "params": (dict, type(None)), "headers": (dict,),
    "idempotency_key": (str,), "error_categories": (list,), "last_status": (int, type(None)),
    "message": (str,), "attempts": (int,), "first_enqueued_at": (str,), "dead_at": (str,),
    "replay_count": (int,),
}


def wrong_field(envelope: Envelope) -> str | None:
    """The first field whose type is not what we write, or None (a replay must not crash)."""
    for name, types in _FIELD_TYPES.items():
        value = getattr(envelope, name)
        if isinstance(value, bool) or not isinstance(value, types):
            return name
    if not all(isinstance(v, str) for v in envelope.headers.values()):
        return "headers"
    if not all(isinstance(v, str) for v in envelope.error_categories):
        return "error_categories"
    return None


def decode_entry(raw: bytes) -> Entry:
    data, problem = decode_body(raw)
    if problem is not None:
        return Entry(raw, None, None, problem)
    try:
        envelope = Envelope.from_message(data)
    except MalformedJobError as exc:
        return Entry(raw, data, None, str(exc))
    wrong = wrong_field(envelope)
    if wrong is not None:
        return Entry(raw, data, None, f"The envelope's field {wrong!r} has the wrong type.")
    return Entry(raw, data, envelope, None)


def envelope_view(envelope: Envelope) -> dict[str, Any]:
    """An envelope as listings show it: its view (never the original), redacted once more
    with the integration's display policy, in case an old one held a secret."""
    shown = envelope.view()
    policy = policy_for(envelope.integration)
    shown.update(body=redact_body(envelope.body, policy),
                 params=redact_params(envelope.params or {}, policy),
                 headers=redact_headers(envelope.headers or {}, policy),
                 message=redact_text(envelope.message))
    return shown


@dataclass(frozen=True)
class EntryFilter:
    """Which envelopes a command touches; an unset field matches everything."""

    integration: str | None = None
    error_class: str | None = None
    since: datetime | None = None
    older_than: datetime | None = None
    job_id: str | None = None
    exclude_classes: frozenset[str] | None = None  # entries with any of these categories
    exclude_poison: bool | None = None  # entries dead-lettered as poison messages

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)

    def matches(self, envelope: Envelope) -> bool:
        if self.job_id is not None and envelope.job_id != self.job_id:
            return False
        if self.integration is not None and envelope.integration != self.integration:
            return False
        if self.error_class is not None and self.error_class not in envelope.error_categories:
            return False
        if self.exclude_classes and self.exclude_classes & set(envelope.error_categories):
            return False
        if self.exclude_poison and envelope.message.startswith(POISON_PREFIX):
            return False
        if self.since is None and self.older_than is None:
            return True
        try:
            dead_at = parse_time(envelope.dead_at)
        except (TypeError, ValueError):
            return False
        return ((self.since is None or dead_at >= self.since)
                and (self.older_than is None or dead_at < self.older_than))


class QueueList:
    """One broker queue as a Redis list, read oldest first without taking anything off it."""

    def __init__(self, client: redis.Redis, key_prefix: str, queue: str = DLQ_QUEUE) -> None:
        self.client = client
        self.queue = queue
        self.key = f"{key_prefix}{queue}"

    def __len__(self) -> int:
        return int(self.client.llen(self.key))

    def scan(self, chunk: int = READ_CHUNK, stop_after: int | None = None) -> Cursor:
        """Oldest first; with `stop_after`, only that many entries from the oldest end (the
        entries present when the scan started: new ones are pushed at the other end)."""
        return Cursor(self, chunk, stop_after)

    def entries(self) -> Iterator[Entry]:
        """Every entry, oldest first, decoded."""
        yield from self.scan()

    def find(self, job_id: str) -> Entry | None:
        """The oldest entry of `job_id`, or None."""
        return next((entry for entry in self.entries() if entry.job_id == job_id), None)

    def remove(self, raw: bytes) -> bool:
        """Remove one occurrence of exactly these bytes, searching from the oldest end."""
        return int(self.client.lrem(self.key, -1, _as_value(raw))) == 1

    def remove_many(self, raws: list[bytes]) -> int:
        """Remove each of `raws` once (one round trip); returns how many were found."""
        with self.client.pipeline(transaction=False) as pipe:
            for raw in raws:
                pipe.lrem(self.key, -1, _as_value(raw))
            return sum(int(found) for found in pipe.execute())


def _as_value(raw: bytes) -> Any:
    """redis-py sends bytes as they are, though its annotations only name str."""
    return raw


class Cursor:
    """Oldest-first iteration that tolerates its own removals and new entries at the head.

    Positions are counted from the tail, which new LPUSHes do not move; every entry the cursor
    removes itself shortens the stretch already read by one. (If somebody else removes an entry
    meanwhile, the cursor may pass over one unread entry: it is left in place, never lost.)
    """

    def __init__(self, queue: QueueList, chunk: int, stop_after: int | None = None) -> None:
        self._queue = queue
        self._chunk = chunk
        self._behind = 0  # entries already read that are still in the list
        self._left = stop_after  # entries still to read, when the scan is bounded

    def __iter__(self) -> Iterator[Entry]:
        while self._left is None or self._left > 0:
            start = self._behind
            size = self._chunk if self._left is None else min(self._chunk, self._left)
            raws = self._queue.client.lrange(self._queue.key, -(start + size), -(start + 1))
            if not raws:
                return
            self._behind += len(raws)
            if self._left is not None:
                self._left -= len(raws)
            for raw in reversed(raws):
                yield decode_entry(raw if isinstance(raw, bytes) else raw.encode())

    def remove(self, entry: Entry) -> bool:
        removed = self._queue.remove(entry.raw)
        if removed:
            self._behind -= 1
        return removed

    def forget(self, count: int) -> None:
        """Tell the cursor that `count` entries it had read were removed (`remove_many`)."""
        self._behind -= count


def publish_jobs(jobs: Sequence[JobSpec]) -> None:
    """Publish jobs to their work queue the way `producer.publish_job` does, but pipelined.

    The producer's batch (kombu 5.7+) sends every message of the call in one round trip;
    an older kombu publishes them one by one.
    """
    with app.producer_or_acquire() as producer:
        batch: AbstractContextManager[Any] = (
            producer.batch(max_size=4 * len(jobs) + 4) if hasattr(producer, "batch")
            else nullcontext())
        with batch:
            for job in jobs:
                app.send_task(TASK_NAME, kwargs={"job": job.to_message()}, task_id=job.job_id,
                              producer=producer, serializer=task_serializer(),
                              **task_reprs(job, Progress()))


def dlq_client(rt: DlqRuntime) -> redis.Redis:
    if rt.redis is None:
        raise DlqUnavailableError("The dead-letter queue lives in Redis, and this process has "
                                  "no Redis client; set REDIS_URL to the broker's Redis.")
    return rt.redis


class DlqLock:
    """A cluster-wide lock so one replay, purge or release edits the DLQ at a time.

    It expires on its own (`LOCK_TTL_MS`) if its holder dies; long runs call `extend`.
    """

    def __init__(self, client: redis.Redis, key_prefix: str, owner: str) -> None:
        self._client = client
        self.key = f"{key_prefix}dlq:lock"
        self._token = f"{owner}:{uuid.uuid4().hex}"
        self._lock = Lock(client, self.key, timeout=LOCK_TTL_MS / 1000, thread_local=False)

    def __enter__(self) -> DlqLock:
        if not self._lock.acquire(blocking=False, token=self._token):
            holder = self._client.get(self.key)
            text = holder.decode(errors="replace") if isinstance(holder, bytes) else str(holder)
            who = text.rsplit(":", 1)[0] if holder else "another run"
            raise DlqBusyError(f"Another DLQ replay, purge or release is running ({who}); try "
                               "again when it has finished.")
        return self

    def extend(self) -> None:
        """Give the lock its full TTL again; a lock that expired meanwhile is only logged."""
        try:
            self._lock.reacquire()
        except LockNotOwnedError:
            log.warning("dlq_lock_lost", key=self.key,
                        detail="The DLQ lock expired during a long run; another run may start.")

    def __exit__(self, *_: object) -> None:
        try:
            self._lock.release()  # token-checked: never deletes another run's lock
        except LockNotOwnedError:
            log.warning("dlq_lock_expired", key=self.key)
