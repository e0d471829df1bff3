"""The result store: each finished job's `Outcome`, kept for RESULT_TTL, waited on without
polling.

What stays in Redis, and for how long (every family has a bound):

- ``result:{job_id}``: the outcome as JSON, for RESULT_TTL (24 h by default). A body over
  RESULT_MAX_BYTES is not kept; the outcome says so in `body_omitted`.
- ``result:{job_id}:ready``: a one-element list a waiter blocks on (BLPOP), pushed when the
  outcome is written, trimmed to one element and expiring with the outcome.

A waiter that was woken puts the token back, so every other waiter on the same job wakes too.
With RECOVERY_ENCRYPTION_KEYS set the outcome is stored as `{"fernet": TOKEN}` (the upstream's
answer may carry personal data); a reader without the key gets a sentence saying so.
Without Redis (the demo's embedded mode) an in-process twin keeps the same promises with a
condition variable, and keeps at most `LOCAL_ENTRIES_KEPT` outcomes.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

import redis

from recovery.core.crypto import Cipher, UndecryptableError
from recovery.core.outcome_value import MalformedOutcomeError, Outcome
from recovery.state.connection import integration_tag, is_cluster

DEFAULT_TTL_S = 24 * 3600
DEFAULT_MAX_BYTES = 1024 * 1024
LOCAL_ENTRIES_KEPT = 10_000
#: Longest single BLPOP: below the client's socket timeout, or redis-py would give up first.
_MAX_BLOCK_S = 4.0
_TOKEN = "1"


def body_size(body: Any) -> int:
    """The body's size as the store keeps it: its JSON encoding in UTF-8."""
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                          default=str).encode())


class ResultStore:
    """Outcomes by job id, shared by the cluster through Redis (`client`), or in-process."""

    def __init__(self, client: redis.Redis | None, *, key_prefix: str = "recovery:",
                 ttl_s: int = DEFAULT_TTL_S, max_body_bytes: int = DEFAULT_MAX_BYTES,
                 cipher: Cipher | None = None) -> None:
        if ttl_s < 1:
            raise ValueError(f"The result TTL must be at least 1 second, got {ttl_s}.")
        self._client = client
        self._prefix = key_prefix
        self.ttl_s = ttl_s
        self.max_body_bytes = max_body_bytes
        self._local: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._changed = threading.Condition()
        self._block_s = _block_limit(client)
        self._cipher = cipher

    def key(self, job_id: str) -> str:
        # On a Redis Cluster a job's two keys share the hash tag {job id}: one slot, so the
        # transactions below stay possible.
        return f"{self._prefix}result:{integration_tag(self._client, job_id)}"

    def ready_key(self, job_id: str) -> str:
        return f"{self.key(job_id)}:ready"

    def capped(self, outcome: Outcome) -> Outcome:
        """`outcome` as it will be kept: without its body when that is over the cap."""
        if outcome.body is None:
            return outcome
        size = body_size(outcome.body)
        if size <= self.max_body_bytes:
            return outcome
        return outcome.without_body(
            f"The response body was {size} bytes, over RESULT_MAX_BYTES "
            f"({self.max_body_bytes} bytes), so it was not kept; raise RESULT_MAX_BYTES or "
            "have the upstream return less.")

    def put(self, outcome: Outcome) -> Outcome:
        """Keep `outcome` (replacing an earlier one of the same job) and wake its waiters.
        Returns what was kept."""
        kept = self.capped(outcome)
        text = self._seal(kept)
        if self._client is None:
            self._put_local(kept.job_id, text)
            return kept
        pipe = self._client.pipeline(transaction=True)
        pipe.set(self.key(kept.job_id), text, ex=self.ttl_s)
        self._arm(pipe, kept.job_id, self.ttl_s)
        pipe.execute()
        return kept

    def get(self, job_id: str) -> Outcome | None:
        """The job's outcome, or None when it has not finished or its result expired."""
        if self._client is None:
            return self._get_local(job_id)
        raw = self._client.get(self.key(job_id))
        return None if raw is None else self._open(raw)

    def wait(self, job_id: str, timeout_s: float | None = None) -> Outcome | None:
        """The job's outcome once it is written, or None after `timeout_s` (at most the
        result TTL: an outcome is never kept longer than that anyway)."""
        limit = self.ttl_s if timeout_s is None else min(max(timeout_s, 0.0), self.ttl_s)
        deadline = time.monotonic() + limit
        if self._client is None:
            return self._wait_local(job_id, deadline)
        found = self.get(job_id)
        while found is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            popped = self._client.blpop([self.ready_key(job_id)],
                                        timeout=max(0.01, min(remaining, self._block_s)))
            if popped is not None:
                self._rearm(job_id)
            found = self.get(job_id)
        return found

    def forget(self, job_id: str) -> None:
        if self._client is None:
            with self._changed:
                self._local.pop(job_id, None)
            return
        self._client.delete(self.key(job_id), self.ready_key(job_id))

    def _seal(self, outcome: Outcome) -> str:
        if self._cipher is None:
            return outcome.to_json()
        return json.dumps({"fernet": self._cipher.seal_json(outcome.to_dict())})

    def _open(self, raw: str | bytes) -> Outcome:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise MalformedOutcomeError(f"A stored outcome is not JSON ({exc}).") from exc
        if not (isinstance(data, dict) and set(data) == {"fernet"}):
            return Outcome.from_dict(data)
        if self._cipher is None:
            raise MalformedOutcomeError("The result is encrypted and RECOVERY_ENCRYPTION_KEYS "
                                        "is not set here; set the same keys as the workers.")
        try:
            return Outcome.from_dict(self._cipher.open_json(data["fernet"]))
        except UndecryptableError as exc:
            raise MalformedOutcomeError(f"The result could not be read: {exc}") from None

    def _arm(self, pipe: Any, job_id: str, ttl_s: int) -> None:
        ready = self.ready_key(job_id)
        pipe.lpush(ready, _TOKEN)
        pipe.ltrim(ready, 0, 0)
        pipe.expire(ready, ttl_s)

    def _rearm(self, job_id: str) -> None:
        """Put the token back for the other waiters, for as long as the outcome lives."""
        assert self._client is not None
        left = self._client.ttl(self.key(job_id))
        if isinstance(left, int) and left > 0:
            pipe = self._client.pipeline(transaction=True)
            self._arm(pipe, job_id, left)
            pipe.execute()

    def _put_local(self, job_id: str, text: str) -> None:
        with self._changed:
            self._drop_expired()
            self._local.pop(job_id, None)
            self._local[job_id] = (time.monotonic() + self.ttl_s, text)
            while len(self._local) > LOCAL_ENTRIES_KEPT:
                self._local.popitem(last=False)
            self._changed.notify_all()

    def _get_local(self, job_id: str) -> Outcome | None:
        with self._changed:
            entry = self._local.get(job_id)
            if entry is None or entry[0] <= time.monotonic():
                return None
            return self._open(entry[1])

    def _wait_local(self, job_id: str, deadline: float) -> Outcome | None:
        with self._changed:
            while True:
                found = self._get_local(job_id)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0:
                    return found
                self._changed.wait(remaining)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for job_id in [k for k, (expires, _) in self._local.items() if expires <= now]:
            del self._local[job_id]


def _block_limit(client: redis.Redis | None) -> float:
    """The longest BLPOP the client's socket timeout allows (one second of margin)."""
    if client is None:
        return _MAX_BLOCK_S
    kwargs = (client.get_connection_kwargs() if is_cluster(client)
              else client.connection_pool.connection_kwargs)
    timeout = kwargs.get("socket_timeout")
    if not timeout:
        return _MAX_BLOCK_S * 15
    return max(0.5, min(float(timeout) - 1.0, _MAX_BLOCK_S * 15))
