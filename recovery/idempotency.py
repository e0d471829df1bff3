"""Success per idempotency key, shared by the cluster.

A job whose key already succeeded is not called again, however it arrives (redelivery after a
worker died, a replay, a producer enqueuing twice). While one delivery holds the key's claim,
another delivery of the same key waits instead of calling the upstream in parallel.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import structlog

from recovery.scripts import ScriptCall

log = structlog.get_logger(__name__)

SUCCESS_TTL_S = 7 * 24 * 3600
DELIVERY_COUNT_TTL_S = 24 * 3600
LOCAL_DELIVERIES_KEPT = 100_000

# KEYS[1] success key, KEYS[2] claim key, KEYS[3] delivery counter; ARGV[1] holder,
# ARGV[2] claim ttl ms, ARGV[3] counter ttl s. Returns {answer, deliveries of this message}.
_CLAIM = """
local deliveries = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then return {'succeeded', deliveries} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'busy', deliveries} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'claimed', deliveries}
"""

# KEYS[1] success key, KEYS[2] claim key; ARGV[1] holder, ARGV[2] job id, ARGV[3] ttl s,
# ARGV[4] '1' to record success.
_RELEASE = """
if ARGV[4] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


class Claim(StrEnum):
    CLAIMED = "claimed"
    SUCCEEDED = "succeeded"
    BUSY = "busy"


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    deliveries: int  # how often this exact message was delivered (poison detection)


class IdempotencyStore:
    def __init__(self, client: redis.Redis | None, *, key_prefix: str) -> None:
        self._redis = client
        self._prefix = f"{key_prefix}idem:"
        self._local_success: dict[str, str] = {}
        self._local_claims: dict[str, tuple[str, float]] = {}
        self._local_deliveries: dict[str, int] = {}
        self._lock = threading.Lock()
        if client is not None:
            self._claim = client.register_script(_CLAIM)
            self._release = client.register_script(_RELEASE)

    def _keys(self, key: str) -> list[str]:
        return [f"{self._prefix}{key}:ok", f"{self._prefix}{key}:claim"]

    @property
    def shared(self) -> bool:
        """Whether claims live in Redis (False: in this process only)."""
        return self._redis is not None

    def claim_call(self, key: str, holder: str, ttl_ms: int, delivery: str) -> ScriptCall:
        """The Redis script run of `claim`; its reply goes to `claim_result`."""
        return ScriptCall(_CLAIM, [*self._keys(key), f"{self._prefix}deliveries:{delivery}"],
                          [holder, ttl_ms, DELIVERY_COUNT_TTL_S])

    @staticmethod
    def claim_result(reply: Any) -> ClaimResult:
        answer, deliveries = reply
        text = answer.decode() if isinstance(answer, bytes) else answer
        return ClaimResult(Claim(text), int(deliveries))

    def release_call(self, key: str, holder: str, job_id: str, *, succeeded: bool) -> ScriptCall:
        """The Redis script run of `release`."""
        return ScriptCall(_RELEASE, self._keys(key),
                          [holder, job_id, SUCCESS_TTL_S, "1" if succeeded else "0"])

    def claim(self, key: str, holder: str, ttl_ms: int, delivery: str) -> ClaimResult:
        """Count this delivery of the message `delivery`, then claim the key for it, unless
        the key already succeeded or another holder has it. One round trip."""
        if self._redis is None:
            return self._claim_local(key, holder, ttl_ms, delivery)
        call = self.claim_call(key, holder, ttl_ms, delivery)
        try:
            reply = self._claim(keys=call.keys, args=call.args)
        except redis.RedisError as exc:
            log.warning("idempotency_redis_unavailable", error=str(exc))
            return self._claim_local(key, holder, ttl_ms, delivery)
        return self.claim_result(reply)

    def release(self, key: str, holder: str, job_id: str, *, succeeded: bool) -> None:
        """Give the claim back; with `succeeded`, remember the key so it is never called again."""
        if self._redis is not None:
            call = self.release_call(key, holder, job_id, succeeded=succeeded)
            try:
                self._release(keys=call.keys, args=call.args)
                return
            except redis.RedisError as exc:
                log.warning("idempotency_redis_unavailable", error=str(exc))
        with self._lock:
            if succeeded:
                self._local_success[key] = job_id
            if self._local_claims.get(key, ("", 0.0))[0] == holder:
                del self._local_claims[key]

    def _claim_local(self, key: str, holder: str, ttl_ms: int, delivery: str) -> ClaimResult:
        now = time.monotonic()
        with self._lock:
            if len(self._local_deliveries) > LOCAL_DELIVERIES_KEPT:
                self._local_deliveries.clear()
            deliveries = self._local_deliveries.get(delivery, 0) + 1
            self._local_deliveries[delivery] = deliveries
            if key in self._local_success:
                return ClaimResult(Claim.SUCCEEDED, deliveries)
            current = self._local_claims.get(key)
            if current and current[0] != holder and current[1] > now:
                return ClaimResult(Claim.BUSY, deliveries)
            self._local_claims[key] = (holder, now + ttl_ms / 1000)
            return ClaimResult(Claim.CLAIMED, deliveries)
