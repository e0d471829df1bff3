"""Dead letters as the console lists them: filters, pages, one entry with its attempts.

Entries are read in place (oldest first) by recovery.dlq.store and shown through
`envelope_view`, the function behind `recovery-cli dlq list --json`, so the console shows
exactly what the CLI shows and never an original payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from recovery.audit.queries import get_job
from recovery.core.errors import ErrorCategory
from recovery.dlq.envelope import Envelope
from recovery.dlq.purge import quarantined
from recovery.dlq.store import EntryFilter, QueueList, dlq_client, envelope_view
from recovery.dlq.timeargs import parse_age
from recovery.engine.runtime import Runtime

PAGE_SIZE = 25
MAX_PAGE_SIZE = 200
ERROR_CLASSES = tuple(category.value for category in ErrorCategory)


class FilterError(ValueError):
    """A filter field the operator typed is not valid; the message says which and why."""


@dataclass(frozen=True)
class ConsoleFilter(EntryFilter):
    """`EntryFilter` plus what the console can also select by: job ids and replay counts.

    It is an EntryFilter, so `replay_dlq` and `purge` apply it in their own single pass.
    """

    job_ids: frozenset[str] | None = None
    min_replays: int | None = None
    max_replays: int | None = None

    def matches(self, envelope: Envelope) -> bool:
        if self.job_ids is not None and envelope.job_id not in self.job_ids:
            return False
        if self.min_replays is not None and envelope.replay_count < self.min_replays:
            return False
        if self.max_replays is not None and envelope.replay_count > self.max_replays:
            return False
        return super().matches(envelope)

    def describe(self) -> dict[str, Any]:
        """The filter as JSON for the audit trail."""
        shown: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, frozenset):
                value = sorted(value)
            if value is not None:
                shown[name] = value
        return shown


def _count(form: Mapping[str, str], name: str, label: str) -> int | None:
    text = (form.get(name) or "").strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 6:
        raise FilterError(f"{label} must be a whole number from 0 to 999999, got {text[:20]!r}.")
    return int(text)


def _age(form: Mapping[str, str], name: str, label: str, now: datetime) -> datetime | None:
    text = (form.get(name) or "").strip()
    if not text:
        return None
    try:
        return now - parse_age(text)
    except ValueError as exc:
        raise FilterError(f"{label}: {exc}") from None


def parse_filter(form: Mapping[str, str], known: list[str],
                 now: datetime | None = None) -> ConsoleFilter:
    """The filter a list page or a replay form asks for; FilterError names a bad field."""
    at = now or datetime.now(UTC)
    integration = (form.get("integration") or "").strip() or None
    if integration is not None and integration not in known:
        raise FilterError(f"Unknown integration {integration[:64]!r}; known integrations: "
                          f"{', '.join(known)}.")
    error_class = (form.get("error_class") or "").strip() or None
    if error_class is not None and error_class not in ERROR_CLASSES:
        raise FilterError(f"Unknown error class {error_class[:64]!r}; use one of "
                          f"{', '.join(ERROR_CLASSES)}.")
    selected = [job_id for job_id in _getlist(form, "job_id") if job_id]
    return ConsoleFilter(integration=integration, error_class=error_class,
                         since=_age(form, "newer_than", "Dead within", at),
                         older_than=_age(form, "older_than", "Older than", at),
                         min_replays=_count(form, "min_replays", "Replays at least"),
                         max_replays=_count(form, "max_replays", "Replays at most"),
                         job_ids=frozenset(selected) if selected else None)


def _getlist(form: Mapping[str, str], name: str) -> list[str]:
    getlist = getattr(form, "getlist", None)
    if getlist is not None:
        return [str(value) for value in getlist(name)]
    value = form.get(name)
    return [value] if value else []


@dataclass
class Page:
    rows: list[dict[str, Any]] = field(default_factory=list)
    matching: int = 0
    total: int = 0
    number: int = 1
    size: int = PAGE_SIZE

    @property
    def pages(self) -> int:
        return max(1, -(-self.matching // self.size))


def list_page(rt: Runtime, flt: ConsoleFilter, number: int = 1,
              size: int = PAGE_SIZE) -> Page:
    """One page of matching entries, oldest first; malformed entries match only no filter."""
    page = Page(number=max(1, number), size=max(1, min(size, MAX_PAGE_SIZE)))
    first = (page.number - 1) * page.size
    queue = QueueList(dlq_client(rt), rt.settings.redis_key_prefix)
    for entry in queue.entries():
        page.total += 1
        if entry.envelope is None:
            if not flt.is_empty:
                continue
            row: dict[str, Any] = {"kind": "malformed", "job_id": entry.job_id,
                                   "problem": entry.problem}
        elif flt.matches(entry.envelope):
            row = envelope_view(entry.envelope)
        else:
            continue
        if first <= page.matching < first + page.size:
            page.rows.append(row)
        page.matching += 1
    return page


def entry_detail(rt: Runtime, job_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the entry as `dlq show --json` shows it, the job with its attempts); None when absent."""
    entry = QueueList(dlq_client(rt), rt.settings.redis_key_prefix).find(job_id)
    shown: dict[str, Any] | None = None
    if entry is not None:
        shown = (envelope_view(entry.envelope) if entry.envelope is not None else
                 {"kind": "malformed", "job_id": entry.job_id, "problem": entry.problem})
    return shown, get_job(rt.engine, job_id)


def quarantine_rows(rt: Runtime) -> list[dict[str, Any]]:
    """The quarantine as `dlq quarantine list --json` shows it."""
    rows = []
    for entry, record in quarantined(rt):
        rows.append(record.view() if record is not None else  # never the sealed original
                    {"kind": "unreadable", "bytes": len(entry.raw)})
    return rows
