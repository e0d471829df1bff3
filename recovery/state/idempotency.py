"""Success per idempotency key and integration, shared by the cluster.

A job whose key already succeeded on its integration is not called again, however it arrives
(redelivery after a worker died, a replay, a producer enqueuing twice). While one delivery
holds the key's claim, another delivery of the same key waits instead of calling the upstream
in parallel. Keys are scoped to their integration: `alpha` and `beta` may both see key `k`.

What stays in Redis, and for how long (every family has a bound):

- ``idem:{integration}:{key}:ok``, the success record: the idempotency TTL (IDEMPOTENCY_TTL,
  24 h by default, what Stripe keeps) for a key the caller gave. A key the producer generated
  (it equals the job id) can only come back as a redelivery of the same message, so its
  record is kept for the redelivery window only: a worker killed between the call and the
  acknowledgement must not make the redelivery call again.
- ``idem:{integration}:{key}:req``, the request fingerprint of a caller-given key, written at
  enqueue with the idempotency TTL: the same key with a different request is refused there.
- ``idem:{integration}:{key}:claim``, the claim of a running delivery: twice the call's
  timeout and 5 s, deleted when the delivery ends.
- ``idem:deliveries:{message}``, the delivery counter (poison detection): the redelivery
  window, refreshed by each delivery.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import structlog

from recovery.state import lua
from recovery.state.connection import integration_tag, is_cluster
from recovery.state.scripts import ScriptCall

log = structlog.get_logger(__name__)

DEFAULT_TTL_S = 24 * 3600
DEFAULT_REDELIVERY_WINDOW_S = 2 * 3600
LOCAL_ENTRIES_KEPT = 100_000


class Claim(StrEnum):
    CLAIMED = "claimed"
    SUCCEEDED = "succeeded"
    BUSY = "busy"


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    deliveries: int  # how often this exact message was delivered (poison detection)
    succeeded_job: str | None = None  # with SUCCEEDED: the job whose success the key records


class KeyReusedError(ValueError):
    """A caller-given idempotency key came back with a different request."""

    def __init__(self, integration: str, key: str) -> None:
        super().__init__(
            f"Idempotency key {key!r} was already used with a different request on integration "
            f"{integration!r}; use a new key or resend the same request.")


def request_fingerprint(method: str, path: str, params: Any, body: Any) -> str:
    """A hash of what makes two requests the same: method, path, query parameters and body.

    Headers are left out on purpose: they carry credentials that rotate between two sends of
    the same request. Mappings compare by content, not by the order of their keys.
    """
    canonical = json.dumps([method.upper(), path, params or {}, body], sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_generated(key: str, job_id: str) -> bool:
    """Whether the producer made the key up from the job id (the caller gave none)."""
    return key == job_id


class _Bounded(OrderedDict[str, Any]):
    """An in-process map that forgets its oldest entries past LOCAL_ENTRIES_KEPT."""

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > LOCAL_ENTRIES_KEPT:
            self.popitem(last=False)


class IdempotencyStore:
    """Claims, success records and request fingerprints, in Redis or (without) in-process.

    `ttl_s` bounds caller-given keys' records; `redelivery_window_s` bounds generated keys'
    records and delivery counters (twice the broker's visibility timeout: a message that is not
    acknowledged comes back within one).
    """

    def __init__(self, client: redis.Redis | None, *, key_prefix: str,
                 ttl_s: int = DEFAULT_TTL_S,
                 redelivery_window_s: int = DEFAULT_REDELIVERY_WINDOW_S) -> None:
        self._redis = client
        self._prefix = f"{key_prefix}idem:"
        self.ttl_s = ttl_s
        self.redelivery_window_s = redelivery_window_s
        self._local_success = _Bounded()
        self._local_claims: dict[str, tuple[str, float]] = {}
        self._local_deliveries = _Bounded()
        self._local_requests = _Bounded()
        self._lock = threading.Lock()
        if client is not None:
            self._claim = client.register_script(lua.load("idempotency_claim"))
            self._release = client.register_script(lua.load("idempotency_release"))
            self._remember = client.register_script(lua.load("idempotency_remember"))

    def key_name(self, integration: str, key: str, part: str) -> str:
        """The Redis key of `part` (ok, claim, req) of an idempotency key on an integration."""
        return f"{self._prefix}{integration_tag(self._redis, integration)}:{key}:{part}"

    def legacy_success_key(self, key: str) -> str:
        """Where versions before per-integration scoping recorded a success (for 7 days).

        A producer resending a key that succeeded just before an upgrade must still get a
        duplicate, so the claim counts these records too, on any integration, until the last
        of them has expired; this check can go 7 days after every worker runs this version.
        """
        return f"{self._prefix}{key}:ok"

    def _cluster_safe_keys(self, integration: str, key: str, delivery: str) -> list[str]:
        """The delivery counter and the legacy success key of a claim. On a Redis Cluster
        they carry the integration's hash tag like the rest of the claim's keys; no record
        from before per-integration scoping can exist there (no earlier version ran on a
        cluster), so the success key itself stands in for the legacy one."""
        if not is_cluster(self._redis):
            return [f"{self._prefix}deliveries:{delivery}", self.legacy_success_key(key)]
        tag = integration_tag(self._redis, integration)
        return [f"{self._prefix}{tag}:deliveries:{delivery}", self.key_name(integration, key, "ok")]

    def _keys(self, integration: str, key: str) -> list[str]:
        return [self.key_name(integration, key, "ok"), self.key_name(integration, key, "claim")]

    @property
    def shared(self) -> bool:
        """Whether claims live in Redis (False: in this process only)."""
        return self._redis is not None

    def success_ttl_s(self, key: str, job_id: str) -> int:
        """How long a success is remembered: see the module's docstring."""
        return self.redelivery_window_s if is_generated(key, job_id) else self.ttl_s

    def remember_request(self, integration: str, key: str, job_id: str, fingerprint: str) -> None:
        """At enqueue: note which request a caller-given key stands for, or raise
        KeyReusedError when the key already stands for a different one on this integration.
        Redis failing: logged, and the job goes ahead (its key is still checked at the call)."""
        if is_generated(key, job_id):
            return
        name = self.key_name(integration, key, "req")
        if self._redis is not None:
            try:
                accepted = self._remember(keys=[name], args=[fingerprint, self.ttl_s * 1000])
            except redis.RedisError as exc:
                log.warning("idempotency_redis_unavailable", error=str(exc))
                return
        else:
            with self._lock:
                known = self._local_requests.get(name, fingerprint)
                self._local_requests.put(name, known)
                accepted = known == fingerprint
        if not accepted:
            raise KeyReusedError(integration, key)

    def claim_call(self, integration: str, key: str, holder: str, ttl_ms: int,
                   delivery: str) -> ScriptCall:
        """The Redis script run of `claim`; its reply goes to `claim_result`."""
        return ScriptCall(lua.load("idempotency_claim"), [*self._keys(integration, key),
                                   *self._cluster_safe_keys(integration, key, delivery)],
                          [holder, ttl_ms, self.redelivery_window_s])

    @staticmethod
    def claim_result(reply: Any) -> ClaimResult:
        answer, deliveries, *done = (part.decode() if isinstance(part, bytes) else part
                                     for part in reply)
        return ClaimResult(Claim(answer), int(deliveries), done[0] if done else None)

    def release_call(self, integration: str, key: str, holder: str, job_id: str, *,
                     succeeded: bool) -> ScriptCall:
        """The Redis script run of `release`."""
        return ScriptCall(lua.load("idempotency_release"), self._keys(integration, key),
                          [holder, job_id, self.success_ttl_s(key, job_id),
                           "1" if succeeded else "0"])

    def claim(self, integration: str, key: str, holder: str, ttl_ms: int,
              delivery: str) -> ClaimResult:
        """Count this delivery of the message `delivery`, then claim the key for it, unless
        the key already succeeded or another holder has it. One round trip."""
        if self._redis is None:
            return self._claim_local(integration, key, holder, ttl_ms, delivery)
        call = self.claim_call(integration, key, holder, ttl_ms, delivery)
        try:
            reply = self._claim(keys=call.keys, args=call.args)
        except redis.RedisError as exc:
            log.warning("idempotency_redis_unavailable", error=str(exc))
            return self._claim_local(integration, key, holder, ttl_ms, delivery)
        return self.claim_result(reply)

    def release(self, integration: str, key: str, holder: str, job_id: str, *,
                succeeded: bool) -> None:
        """Give the claim back; with `succeeded`, remember the key so it is never called again."""
        if self._redis is not None:
            call = self.release_call(integration, key, holder, job_id, succeeded=succeeded)
            try:
                self._release(keys=call.keys, args=call.args)
                return
            except redis.RedisError as exc:
                log.warning("idempotency_redis_unavailable", error=str(exc))
        scoped = f"{integration}:{key}"
        with self._lock:
            if succeeded:
                self._local_success.put(scoped, job_id)
            if self._local_claims.get(scoped, ("", 0.0))[0] == holder:
                del self._local_claims[scoped]

    def _claim_local(self, integration: str, key: str, holder: str, ttl_ms: int,
                     delivery: str) -> ClaimResult:
        now = time.monotonic()
        scoped = f"{integration}:{key}"
        with self._lock:
            deliveries = self._local_deliveries.get(delivery, 0) + 1
            self._local_deliveries.put(delivery, deliveries)
            if scoped in self._local_success:
                done = self._local_success.get(scoped)
                return ClaimResult(Claim.SUCCEEDED, deliveries,
                                   done if isinstance(done, str) else None)
            current = self._local_claims.get(scoped)
            if current and current[0] != holder and current[1] > now:
                return ClaimResult(Claim.BUSY, deliveries)
            if len(self._local_claims) > LOCAL_ENTRIES_KEPT:
                self._local_claims = {k: v for k, v in self._local_claims.items() if v[1] > now}
            self._local_claims[scoped] = (holder, now + ttl_ms / 1000)
            return ClaimResult(Claim.CLAIMED, deliveries)
