"""The quarantine (`dlq.quarantine`): entries a replay, a purge or the cap took out of the
DLQ because they cannot or must not run again, and work messages no key could decrypt. Each is
a `QuarantineRecord`: what an operator may see, why it is there, and the sealed original a
release puts back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from recovery.config.queues import QUARANTINE_QUEUE
from recovery.core.message import MalformedJobError
from recovery.core.redact import redact_text
from recovery.dlq.publishing import publish_message
from recovery.dlq.store import Entry

log = structlog.get_logger(__name__)

QUARANTINE_KIND = "api-recovery.quarantine/1"


def shown_raw(entry: Entry) -> tuple[str, Any]:
    """A malformed entry as redacted text, and its sealed original (kept, never shown)."""
    if isinstance(entry.data, dict):
        shown = {k: v for k, v in entry.data.items() if k != "original"}
        return redact_text(json.dumps(shown, default=str)), entry.data.get("original")
    return redact_text(entry.raw.decode("utf-8", errors="replace")), None


@dataclass(frozen=True)
class QuarantineRecord:
    """What `dlq.quarantine` holds: the entry (envelope view, or redacted raw text), why it is
    there, and the entry's sealed original (for a release; `view()` leaves it out)."""

    job_id: str | None
    integration: str | None
    reason: str
    quarantined_at: str
    envelope: dict[str, Any] | None
    raw: str | None
    kind: str = QUARANTINE_KIND
    original: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, entry: Entry, reason: str) -> QuarantineRecord:
        envelope = entry.envelope
        raw, original = (None, None) if envelope else shown_raw(entry)
        if envelope is not None and envelope.original is not None:
            original = envelope.original.stored()
        return cls(job_id=entry.job_id, integration=envelope.integration if envelope else None,
                   reason=reason, quarantined_at=datetime.now(UTC).isoformat(),
                   envelope=envelope.view() if envelope else None, raw=raw, original=original)

    @classmethod
    def from_message(cls, data: Any) -> QuarantineRecord:
        if not isinstance(data, dict) or data.get("kind") != QUARANTINE_KIND:
            raise MalformedJobError("The message is not a quarantine record of this system.")
        names = [name for name in cls.__dataclass_fields__ if name != "original"]
        try:
            values = {name: data[name] for name in names}
        except KeyError as exc:
            raise MalformedJobError(f"The quarantine record lacks {exc.args[0]!r}.") from exc
        return cls(**values, original=data.get("original"))

    def to_message(self) -> dict[str, Any]:
        """The broker message, sealed original included: never print it, print `view()`."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def view(self) -> dict[str, Any]:
        """What `dlq quarantine list` shows: everything but the original."""
        shown = {name: getattr(self, name) for name in self.__dataclass_fields__
                 if name != "original"}
        if self.envelope is not None:
            shown["envelope"] = {k: v for k, v in self.envelope.items() if k != "original"}
        return shown

    def sealed_envelope(self) -> dict[str, Any] | None:
        """The envelope with its original put back, as `Envelope.from_message` reads it."""
        if self.envelope is None:
            return None
        if self.original is None:
            return dict(self.envelope)
        return {**self.envelope, "original": self.original}


def publish_record(record: QuarantineRecord, queue_name: str = QUARANTINE_QUEUE) -> None:
    """Publish a quarantine record to its broker queue; raises when the broker refuses it."""
    publish_message(record.to_message(), queue_name)


def keep_undecryptable(token: bytes) -> None:
    """Quarantine a work-queue message that no key in RECOVERY_ENCRYPTION_KEYS opens, still
    encrypted, before Celery drops it as undecodable; `dlq quarantine list` shows the reason."""
    record = QuarantineRecord(
        job_id=None, integration=None, quarantined_at=datetime.now(UTC).isoformat(),
        reason=("undecryptable: a work-queue message could not be decrypted with "
                "RECOVERY_ENCRYPTION_KEYS (written with another key, or altered); it is kept "
                "here encrypted, add the key it was written with to recover it"),
        envelope=None, raw=None,
        original={"format": "fernet", "token": token.decode("ascii", errors="replace")})
    try:
        publish_record(record)
    except Exception as exc:
        log.error("undecryptable_message_lost", error=redact_text(str(exc))[:300])
        return
    log.error("undecryptable_message_quarantined")
