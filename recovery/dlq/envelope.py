"""The dead-letter envelope: the original request for replay, and a redacted copy for display.

An envelope carries two things that must never be confused:

* the display fields (method, path, redacted body, params and headers, error, counts): what
  `dlq list/show`, the audit trail, logs and reports show; `Envelope.view()` is that, and it
  is the only dict a display may print;
* the `Original`: the job exactly as the producer gave it (body, params, job headers,
  idempotency key), sealed. Its repr is "<original hidden>", it is not JSON-serialisable, and
  it is opened only by `Envelope.job()` for a replay. With RECOVERY_ENCRYPTION_KEYS it is
  stored as a Fernet token; without, as plain JSON (like the work-queue message itself).

Envelopes written before originals were kept (kind `api-recovery.dead-letter/1`) are still
read; they have no original, so replay quarantines them instead of sending redacted values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from recovery.core.crypto import Cipher, UndecryptableError, current_cipher
from recovery.core.message import TASK_NAME, JobSpec, MalformedJobError
from recovery.core.redact import policy_for, redact_body, redact_headers, redact_params

ENVELOPE_KIND = "api-recovery.dead-letter/2"
LEGACY_KIND = "api-recovery.dead-letter/1"
PLAIN, FERNET = "plain", "fernet"


class UnreadableOriginalError(ValueError):
    """The envelope's original request cannot be read, so it must not be replayed."""


class Original:
    """The job as the producer gave it, sealed: printing it shows "<original hidden>"."""

    __slots__ = ("_stored",)

    def __init__(self, stored: Any) -> None:
        self._stored = stored

    def __repr__(self) -> str:
        return "<original hidden>"

    __str__ = __repr__

    @classmethod
    def seal(cls, job: JobSpec, cipher: Cipher | None) -> Original:
        if cipher is None:
            return cls({"format": PLAIN, "job": job.to_message()})
        return cls({"format": FERNET, "token": cipher.seal_json(job.to_message())})

    @property
    def encrypted(self) -> bool:
        return isinstance(self._stored, dict) and self._stored.get("format") == FERNET

    def stored(self) -> Any:
        """The stored form, for the DLQ message (a token when encrypted) and nothing else."""
        return self._stored

    def open(self, cipher: Cipher | None) -> JobSpec:
        """The original job; UnreadableOriginalError (a sentence) when it cannot be read."""
        stored = self._stored
        fmt = stored.get("format") if isinstance(stored, dict) else None
        if fmt == PLAIN:
            data = stored.get("job")
        elif fmt == FERNET:
            data = self._decrypt(stored.get("token"), cipher)
        else:
            raise UnreadableOriginalError("the original request is in an unknown format")
        try:
            return JobSpec.from_message(data)
        except (MalformedJobError, TypeError) as exc:
            raise UnreadableOriginalError(f"the original request is not a job ({exc})") from exc

    @staticmethod
    def _decrypt(token: Any, cipher: Cipher | None) -> Any:
        if not isinstance(token, str):
            raise UnreadableOriginalError("the encrypted original request has no token")
        if cipher is None:
            raise UnreadableOriginalError(
                "the original request is encrypted and RECOVERY_ENCRYPTION_KEYS is not set")
        try:
            return cipher.open_json(token)
        except UndecryptableError as exc:
            raise UnreadableOriginalError(
                "the original request could not be decrypted with RECOVERY_ENCRYPTION_KEYS "
                "(written with another key, or altered)") from exc
        except ValueError as exc:
            raise UnreadableOriginalError("the decrypted original request is not JSON") from exc


@dataclass(frozen=True)
class Envelope:
    job_id: str
    task_name: str
    integration: str
    method: str
    path: str
    body: Any  # redacted
    params: dict[str, Any]  # redacted
    headers: dict[str, str]  # redacted
    idempotency_key: str
    error_categories: list[str]
    last_status: int | None
    message: str
    attempts: int
    first_enqueued_at: str
    dead_at: str
    replay_count: int
    kind: str = field(default=ENVELOPE_KIND)
    original: Original | None = field(default=None, repr=False, compare=False)

    def view(self) -> dict[str, Any]:
        """Every display field, and never the original: what listings and the audit show."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "original"}

    def sealed_message(self) -> dict[str, Any]:
        """The DLQ message: the view plus the sealed original (a token when encrypted)."""
        stored = self.original.stored() if self.original is not None else None
        return {**self.view(), "original": stored}

    @classmethod
    def from_message(cls, data: Any) -> Envelope:
        if not isinstance(data, dict) or data.get("kind") not in (ENVELOPE_KIND, LEGACY_KIND):
            raise MalformedJobError("The message is not a dead-letter envelope of this system.")
        names = [f.name for f in fields(cls) if f.name != "original"]
        try:
            values = {name: data[name] for name in names}
        except KeyError as exc:
            raise MalformedJobError(f"The envelope lacks the field {exc.args[0]!r}.") from exc
        if data["kind"] == LEGACY_KIND:
            return cls(**values)
        if data.get("original") is None:
            raise MalformedJobError("The envelope lacks its original request.")
        return cls(**values, original=Original(data["original"]))

    def job(self, cipher: Cipher | None = None) -> JobSpec:
        """The original job for a replay, with this envelope's replay count.

        `cipher` defaults to this process's (RECOVERY_ENCRYPTION_KEYS). Raises
        UnreadableOriginalError when there is no original (an old envelope), it cannot be
        decrypted, or it does not belong to this envelope: never a half-redacted job.
        """
        if self.original is None:
            raise UnreadableOriginalError(
                "the entry was dead-lettered by an older version that kept only the redacted "
                "request; replaying it would send redacted values, so enqueue the job again "
                "from its source")
        job = self.original.open(cipher if cipher is not None else current_cipher())
        if job.job_id != self.job_id or job.integration != self.integration:
            raise UnreadableOriginalError(
                "the original request belongs to another job than the envelope")
        return replace(job, replay_count=self.replay_count)  # callbacks and all


def envelope_for(job: JobSpec, *, categories: list[str], last_status: int | None, message: str,
                 attempts: int, dead_at: str, cipher: Cipher | None = None) -> Envelope:
    """The envelope of a dead job: redacted display fields, and the job sealed with `cipher`
    (default: this process's, so encrypted exactly when RECOVERY_ENCRYPTION_KEYS is set)."""
    shown = policy_for(job.integration)
    return Envelope(
        job_id=job.job_id, task_name=TASK_NAME, integration=job.integration, method=job.method,
        path=job.path, body=redact_body(job.json, shown),
        params=redact_params(job.params or {}, shown),
        headers=redact_headers(job.headers, shown), idempotency_key=job.idempotency_key,
        error_categories=categories, last_status=last_status, message=message,
        attempts=attempts, first_enqueued_at=job.enqueued_at, dead_at=dead_at,
        replay_count=job.replay_count,
        original=Original.seal(job, cipher if cipher is not None else current_cipher()))
