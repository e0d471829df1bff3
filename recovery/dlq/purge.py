"""Operator maintenance of the DLQ: purging old entries, and releasing quarantined ones.

Both hold the DLQ lock, like a replay, so no two runs edit the queues at the same time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog

from recovery.config.queues import QUARANTINE_QUEUE
from recovery.core.crypto import cipher_for
from recovery.core.message import JobSpec, MalformedJobError
from recovery.dlq.context import DlqRuntime
from recovery.dlq.envelope import Envelope
from recovery.dlq.marks import mark_dead_letters, mark_requeued, revert_requeued
from recovery.dlq.quarantine import QuarantineRecord
from recovery.dlq.store import (
    DlqLock,
    Entry,
    EntryFilter,
    QueueList,
    decode_body,
    dlq_client,
    publish_jobs,
    wrong_field,
)
from recovery.dlq.validate import UnreplayableError, replayable_job

log = structlog.get_logger(__name__)

PURGE_BATCH = 500


class ReleaseError(LookupError):
    """The quarantined entry does not exist or cannot be replayed; the message says why."""


@dataclass
class PurgeReport:
    purged: int = 0
    kept: int = 0
    job_ids: list[str] = field(default_factory=list)


def purgeable(entry: Entry, flt: EntryFilter) -> bool:
    """Envelopes matching the filter; a malformed entry only when no filter is given."""
    if entry.envelope is None:
        return flt.is_empty
    return flt.matches(entry.envelope)


def purge(rt: DlqRuntime, flt: EntryFilter, *, actor: str = "recovery-cli") -> PurgeReport:
    """Delete the matching entries from the DLQ and mark their dead letters purged."""
    dlq = QueueList(dlq_client(rt), rt.settings.redis_key_prefix)
    report = PurgeReport()
    with DlqLock(dlq.client, rt.settings.redis_key_prefix, actor) as lock:
        cursor = dlq.scan()
        pending: list[Entry] = []
        for entry in cursor:
            if not purgeable(entry, flt):
                report.kept += 1
                continue
            pending.append(entry)
            if len(pending) >= PURGE_BATCH:
                cursor.forget(_remove(rt, dlq, pending, report, actor))
                pending = []
                lock.extend()
        if pending:
            cursor.forget(_remove(rt, dlq, pending, report, actor))
    log.warning("dlq_purged", actor=actor, purged=report.purged, kept=report.kept)
    return report


def _remove(rt: DlqRuntime, dlq: QueueList, entries: list[Entry], report: PurgeReport,
            actor: str) -> int:
    removed = dlq.remove_many([entry.raw for entry in entries])
    ids = [entry.job_id for entry in entries if entry.envelope is not None and entry.job_id]
    report.purged += removed
    report.job_ids.extend(ids)
    if ids:
        mark_dead_letters(rt.audit.engine, ids, "purged", f"purged by {actor}")
    return removed


def quarantined(rt: DlqRuntime) -> Iterator[tuple[Entry, QuarantineRecord | None]]:
    """Every quarantine entry, oldest first, with its record (None if it cannot be read)."""
    queue = QueueList(dlq_client(rt), rt.settings.redis_key_prefix, QUARANTINE_QUEUE)
    for entry in queue.entries():
        data, _ = decode_body(entry.raw)
        try:
            yield entry, QuarantineRecord.from_message(data)
        except (MalformedJobError, TypeError):
            yield entry, None


def release(rt: DlqRuntime, job_id: str, *, actor: str = "recovery-cli") -> JobSpec:
    """Send a quarantined job back to its work queue (replay count + 1), past the replay cap.

    The operator's explicit decision overrides DLQ_MAX_RETRIES once; if the job dies again it
    is parked in the DLQ, and a later replay quarantines it again.
    """
    queue = QueueList(dlq_client(rt), rt.settings.redis_key_prefix, QUARANTINE_QUEUE)
    with DlqLock(queue.client, rt.settings.redis_key_prefix, actor):
        entry, record = _find(rt, job_id)
        job = _releasable(rt, record).replayed()
        mark_requeued(rt.audit, [job], f"released from quarantine by {actor}")
        try:
            publish_jobs([job])
        except Exception as exc:
            revert_requeued(rt.audit, [job], f"release failed: {exc}")
            mark_dead_letters(rt.audit.engine, [job.job_id], "quarantined", record.reason)
            raise ReleaseError(f"The broker did not take job {job_id!r} ({exc}); it stays in "
                               "quarantine, try again when the broker is reachable.") from exc
        queue.remove(entry.raw)
    log.warning("dlq_quarantine_released", job_id=job_id, actor=actor,
                replay_count=job.replay_count)
    return job


def _find(rt: DlqRuntime, job_id: str) -> tuple[Entry, QuarantineRecord]:
    for entry, record in quarantined(rt):
        if record is not None and record.job_id == job_id:
            return entry, record
    raise ReleaseError(f"No quarantined entry has the job id {job_id!r}; "
                       "'recovery-cli dlq quarantine list' shows the quarantine.")


def _releasable(rt: DlqRuntime, record: QuarantineRecord) -> JobSpec:
    """The original job of a quarantined entry, re-checked like a replay; ReleaseError if none."""
    sealed = record.sealed_envelope()
    if sealed is None:
        raise ReleaseError(f"The entry {record.job_id!r} was quarantined as malformed "
                           f"({record.reason}), so it holds no job to replay.")
    try:
        envelope = Envelope.from_message(sealed)
    except (MalformedJobError, TypeError) as exc:
        raise ReleaseError(f"The quarantined entry {record.job_id!r} is unreadable: {exc}") \
            from exc
    wrong = wrong_field(envelope)
    if wrong is not None:
        raise ReleaseError(f"The quarantined entry {record.job_id!r} has a {wrong!r} of the "
                           "wrong type, so it cannot be replayed.")
    if envelope.integration not in rt.registry.ids():
        raise ReleaseError(f"The job's integration {envelope.integration!r} is not configured; "
                           "add it to the integrations file before releasing the job.")
    try:
        return replayable_job(envelope, rt.registry, cipher_for(rt.settings.encryption_keys))
    except UnreplayableError as exc:
        raise ReleaseError(f"The quarantined entry {record.job_id!r} cannot be released: "
                           f"{exc}.") from exc
