"""Replaying dead letters: filtered, capped, rate-limited, idempotent and crash-safe.

One run makes one pass: it looks at the entries that were in the DLQ when it started, each
once, oldest first. Jobs that die again during the run are parked at the other end of the list
and wait for the next run (no "Retry All" loop).

    malformed (not our envelope, broken JSON)   -> quarantine, with the reason
    not matching the filters                    -> untouched, keeps its place
    integration no longer configured            -> skipped, stays in the DLQ
    replay count has reached DLQ_MAX_RETRIES    -> quarantine, alert `alert_dlq_replay_cap_reached`
    original unreadable (old envelope, wrong    -> quarantine, with the reason, alert
      key, tampered) or refused by the enqueue     `alert_dlq_entry_unreplayable`
      checks (`recovery.dlq.validate`)
    its integration's breaker is open           -> skipped, stays in the DLQ
    otherwise                                   -> replayed: the ORIGINAL request, re-checked

A replayed job goes back to its work queue with the same job id and idempotency key and its
replay count increased, so a duplicate (say, from a crash between publishing and removing) is
recognised by the worker and never calls the upstream twice. Replays leave in small batches:
the batch's audit rows are written first (a worker that picks a job up at once must not have
its status overwritten by ours), then the batch is published in one Redis round trip, and only
then are its entries removed from the DLQ.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import structlog

from recovery.config.queues import QUARANTINE_QUEUE
from recovery.core.crypto import cipher_for
from recovery.core.message import JobSpec
from recovery.dlq.context import DlqRuntime
from recovery.dlq.envelope import Envelope
from recovery.dlq.marks import mark_dead_letters, mark_requeued, revert_requeued
from recovery.dlq.quarantine import QuarantineRecord, publish_record
from recovery.dlq.store import (
    Cursor,
    DlqLock,
    Entry,
    EntryFilter,
    QueueList,
    dlq_client,
    publish_jobs,
)
from recovery.dlq.validate import UnreplayableError, replayable_job
from recovery.telemetry.alerts import alert

__all__ = ["ReplayOptions", "ReplayReport", "Replayer", "decide", "replay_dlq"]

log = structlog.get_logger(__name__)

Action = Literal["replay", "skip", "quarantine", "failed"]
Cause = Literal["replay", "malformed", "replay-cap", "unreplayable", "breaker-open",
                "unknown-integration", "publish-failed"]
Prepare = Callable[[Envelope], JobSpec]
MAX_BATCH = 200
BREAKER_CACHE_S = 1.0
LOCK_EXTEND_S = 10.0


@dataclass(frozen=True)
class ReplayOptions:
    filter: EntryFilter = field(default_factory=EntryFilter)
    limit: int | None = None  # replays at most this many entries (quarantines not counted)
    rate: float | None = None  # replays at most this many entries per second
    dry_run: bool = False
    actor: str = "recovery-cli"


@dataclass(frozen=True)
class PlanItem:
    job_id: str | None
    integration: str | None
    action: Action
    cause: Cause
    reason: str


@dataclass
class ReplayReport:
    dry_run: bool
    items: list[PlanItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self, action: Action) -> int:
        return sum(1 for item in self.items if item.action == action)

    @property
    def exit_code(self) -> int:
        """0 when every chosen entry moved; 1 when some failed to move or the run stopped."""
        return 1 if self.errors or self.count("failed") else 0

    def summary(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "replayed": self.count("replay"),
                "skipped": self.count("skip"), "quarantined": self.count("quarantine"),
                "failed": self.count("failed"), "errors": list(self.errors)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "entries": [item.__dict__ for item in self.items]}


class TokenBucket:
    """At most `rate` acquisitions a second: a bucket of one token that starts empty.

    With no burst allowance, n acquisitions take at least n / rate seconds.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"The rate must be above 0 entries per second, got {rate!r}.")
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._ready_at = clock() + self._interval

    def acquire(self) -> None:
        now = self._clock()
        if now < self._ready_at:
            self._sleep(self._ready_at - now)
            now = self._ready_at
        self._ready_at = max(now, self._ready_at) + self._interval


def decide(entry: Entry, flt: EntryFilter, *, known: Container[str], max_replays: int,
           open_for: Callable[[str], float | None],
           prepare: Prepare) -> tuple[PlanItem, JobSpec | None] | None:
    """What to do with one entry, and the job to publish when it is a replay; None leaves the
    entry untouched (it does not match the filters).

    `open_for(integration)` is the time until the integration's open breaker lets a probe
    through, or None when it is not open. `prepare(envelope)` opens and re-checks the original
    request, raising UnreplayableError with the reason when it must not be replayed.
    """
    envelope = entry.envelope
    if envelope is None:
        return PlanItem(entry.job_id, None, "quarantine", "malformed",
                        f"malformed: {entry.problem}"), None
    if not flt.matches(envelope):
        return None
    job_id, integration = envelope.job_id, envelope.integration
    if integration not in known:
        return PlanItem(job_id, integration, "skip", "unknown-integration",
                        f"the integration {integration!r} is not configured any more"), None
    if envelope.replay_count >= max_replays:
        return PlanItem(job_id, integration, "quarantine", "replay-cap",
                        f"replay cap reached: replayed {envelope.replay_count} times, "
                        f"DLQ_MAX_RETRIES is {max_replays}"), None
    try:
        job = prepare(envelope)
    except UnreplayableError as exc:
        return PlanItem(job_id, integration, "quarantine", "unreplayable", str(exc)), None
    wait_s = open_for(integration)
    if wait_s is not None:
        return PlanItem(job_id, integration, "skip", "breaker-open",
                        f"breaker still open (next probe in {wait_s:.1f} s)"), None
    return PlanItem(job_id, integration, "replay", "replay",
                    f"replay {envelope.replay_count + 1} of {max_replays}"), job.replayed()


class BreakerView:
    """Whether an integration's breaker is open, asked of Redis at most once a second each."""

    def __init__(self, rt: DlqRuntime, clock: Callable[[], float] = time.monotonic) -> None:
        self._rt = rt
        self._clock = clock
        self._seen: dict[str, tuple[float, float | None]] = {}

    def open_for(self, integration_id: str) -> float | None:
        now = self._clock()
        cached = self._seen.get(integration_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        snapshot = self._rt.breaker(self._rt.registry.get(integration_id)).snapshot()
        wait = snapshot.time_to_half_open_s
        answer = wait if snapshot.state == "open" and (wait is None or wait > 0) else None
        self._seen[integration_id] = (now + BREAKER_CACHE_S, answer)
        return answer


Planned = tuple[Entry, PlanItem, JobSpec | None]


class Replayer:
    """One replay run over the DLQ; `run()` returns what it did (or, dry, would do).

    `on_progress(1)` is called once per entry the run selects (acts on), not per entry read.
    """

    def __init__(self, rt: DlqRuntime, options: ReplayOptions, *,
                 on_progress: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._rt = rt
        self._options = options
        self._on_progress = on_progress
        self._clock = clock
        self._dlq = QueueList(dlq_client(rt), rt.settings.redis_key_prefix)
        self._bucket = TokenBucket(options.rate, clock, sleep) if options.rate else None
        # Under a rate limit a batch holds about a tenth of a second of replays.
        self._batch_size = (max(1, min(MAX_BATCH, int(options.rate / 10))) if options.rate
                            else MAX_BATCH)
        self._breakers = BreakerView(rt, clock)
        self._cipher = cipher_for(rt.settings.encryption_keys)
        self._report = ReplayReport(dry_run=options.dry_run)
        self._replays = 0
        self._seen: set[str] = set()

    def run(self) -> ReplayReport:
        if self._options.dry_run:
            self._report.items.extend(item for _, item, _ in self._walk(self._snapshot()))
            return self._report
        with DlqLock(self._dlq.client, self._rt.settings.redis_key_prefix,
                     self._options.actor) as lock:
            self._move(self._snapshot(), lock)
        log.info("dlq_replay_finished", actor=self._options.actor, **self._report.summary())
        return self._report

    def _snapshot(self) -> Cursor:
        """A cursor over the entries present now: one pass, each entry at most once."""
        return self._dlq.scan(stop_after=len(self._dlq))

    def _prepare(self, envelope: Envelope) -> JobSpec:
        return replayable_job(envelope, self._rt.registry, self._cipher)

    def _walk(self, cursor: Cursor) -> Iterator[Planned]:
        """Entries to act on, oldest first, until the limit of replays is reached."""
        limit = self._options.limit
        known = set(self._rt.registry.ids())
        for entry in cursor:
            if limit is not None and self._replays >= limit:
                return
            planned = decide(entry, self._options.filter, known=known,
                             max_replays=self._rt.settings.dlq_max_retries,
                             open_for=self._breakers.open_for, prepare=self._prepare)
            if planned is None or self._again(entry):
                continue
            if self._on_progress is not None:
                self._on_progress(1)
            item, job = planned
            if item.action == "replay":
                self._replays += 1
            yield entry, item, job

    def _again(self, entry: Entry) -> bool:
        """True for a job this run already acted on (a second entry of it stays for later)."""
        job_id = entry.job_id
        if job_id is None:
            return False
        if job_id in self._seen:
            return True
        self._seen.add(job_id)
        return False

    def _move(self, cursor: Cursor, lock: DlqLock) -> None:
        batch: list[Planned] = []
        extended_at = self._clock()
        for entry, item, job in self._walk(cursor):
            if self._clock() - extended_at > LOCK_EXTEND_S:
                lock.extend()
                extended_at = self._clock()
            if item.action == "quarantine":
                self._quarantine(cursor, entry, item)
            elif item.action == "skip":
                self._report.items.append(item)
            else:
                if self._bucket is not None:
                    self._bucket.acquire()
                batch.append((entry, item, job))
                if len(batch) >= self._batch_size:
                    if not self._flush(cursor, batch):
                        return
                    batch = []
        if batch:
            self._flush(cursor, batch)

    def _flush(self, cursor: Cursor, batch: list[Planned]) -> bool:
        """Audit, publish, then remove one batch of replays; False when the run must stop."""
        jobs = [job for _, _, job in batch if job is not None]
        reason = f"replayed by {self._options.actor}"
        mark_requeued(self._rt.audit, jobs, reason)
        try:
            publish_jobs(jobs)
        except Exception as exc:
            revert_requeued(self._rt.audit, jobs, f"replay failed: {exc}")
            self._failed(batch, f"the broker did not take the job: {exc}")
            log.error("dlq_replay_publish_failed", error=str(exc), jobs=len(jobs))
            return False
        self._report.items.extend(item for _, item, _ in batch)
        try:
            cursor.forget(self._dlq.remove_many([entry.raw for entry, _, _ in batch]))
        except redis.RedisError as exc:
            self._report.errors.append(
                f"{len(batch)} replayed entries could not be removed from the DLQ ({exc}); a "
                "later replay sends them again, which is harmless (same idempotency keys).")
            return False
        return True

    def _failed(self, batch: list[Planned], why: str) -> None:
        self._report.items.extend(
            PlanItem(item.job_id, item.integration, "failed", "publish-failed", why)
            for _, item, _ in batch)
        self._report.errors.append(f"The run stopped: {why}. The entries stay in the DLQ.")

    def _quarantine(self, cursor: Cursor, entry: Entry, item: PlanItem) -> None:
        """Publish the entry to `dlq.quarantine`, then take it off the DLQ."""
        record = QuarantineRecord.of(entry, item.reason)
        try:
            publish_record(record, QUARANTINE_QUEUE)
            cursor.remove(entry)
        except Exception as exc:
            self._report.items.append(PlanItem(item.job_id, item.integration, "failed",
                                               "publish-failed", f"not quarantined: {exc}"))
            log.error("dlq_quarantine_failed", job_id=item.job_id, error=str(exc))
            return
        self._report.items.append(item)
        if item.job_id is not None and item.cause != "malformed":
            mark_dead_letters(self._rt.audit.engine, [item.job_id], "quarantined", item.reason)
        if item.cause == "replay-cap":
            alert("dlq_replay_cap_reached", f"Job {item.job_id} was quarantined: {item.reason}.",
                  item.integration, job_id=item.job_id, actor=self._options.actor)
        elif item.cause == "unreplayable":
            alert("dlq_entry_unreplayable",
                  f"Job {item.job_id} was quarantined instead of replayed: {item.reason}.",
                  item.integration, job_id=item.job_id, actor=self._options.actor)
        else:
            log.warning("dlq_entry_quarantined", job_id=item.job_id, reason=item.reason)


def replay_dlq(rt: DlqRuntime, options: ReplayOptions,
               on_progress: Callable[[int], None] | None = None) -> ReplayReport:
    """Replay (or, with `dry_run`, plan) the DLQ; raises `DlqBusyError` if another run holds it."""
    return Replayer(rt, options, on_progress=on_progress).run()
