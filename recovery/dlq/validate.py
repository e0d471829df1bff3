"""The gate every replayed entry passes: its original, opened, and checked like a new job.

A DLQ entry sat in Redis for a while; somebody may have edited it, the key may have rotated,
the rules at the edge may have tightened. So a replay re-runs the producer's own validation
(`recovery.core.request.build_job`, the very function behind `enqueue`) on the original request,
and an entry that fails it, or whose original cannot be read, is quarantined with the reason.
"""

from __future__ import annotations

from dataclasses import replace

from recovery.config.registry import Registry
from recovery.core.crypto import Cipher
from recovery.core.message import JobSpec
from recovery.core.request import EnqueueError, build_job
from recovery.dlq.envelope import Envelope, UnreadableOriginalError


class UnreplayableError(ValueError):
    """The entry must not be replayed; the message is the quarantine reason."""


def replayable_job(envelope: Envelope, registry: Registry, cipher: Cipher | None) -> JobSpec:
    """The job to publish for this entry (same id, key and replay count as the original),
    or UnreplayableError saying why it cannot be replayed."""
    try:
        original = envelope.job(cipher)
    except UnreadableOriginalError as exc:
        raise UnreplayableError(f"unreadable: {exc}") from exc
    try:
        checked = build_job(registry, original.integration, original.method, original.path,
                            json=original.json, params=original.params,
                            headers=original.headers, idempotency_key=original.idempotency_key)
    except EnqueueError as exc:
        raise UnreplayableError(f"refused by the enqueue checks: {exc}") from exc
    return replace(original, method=checked.method, path=checked.path, json=checked.json,
                   params=checked.params, headers=checked.headers)
