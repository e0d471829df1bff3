"""What a producer process needs to enqueue jobs and read their outcomes, and nothing more.

`recovery.enqueue` validates against the registry, checks a caller's idempotency key in Redis,
publishes through the bare Celery app (`recovery.celery_base`) and hands the job's "queued"
audit row to the Redis audit spool, which a worker's drain writes to PostgreSQL. So a producer
opens no database connection and loads no SQLAlchemy, breaker, rate limiter or metrics: the
worker's `recovery.engine.runtime.Runtime` holds those. Built on first use, one per process;
`recovery.engine.runtime.reset_runtime` forgets it too (a forked process makes its own sockets).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
import structlog

from recovery.audit.ops import queued_op
from recovery.audit.stream import RedisSpool, SpoolUnavailable
from recovery.config.loader import get_registry
from recovery.config.registry import Registry
from recovery.config.settings import Settings, get_settings
from recovery.core.crypto import cipher_for
from recovery.core.message import JobSpec
from recovery.state.connection import redis_client
from recovery.state.idempotency import IdempotencyStore
from recovery.state.results import ResultStore

log = structlog.get_logger(__name__)


def idempotency_store(settings: Settings, client: redis.Redis | None) -> IdempotencyStore:
    return IdempotencyStore(client, key_prefix=settings.redis_key_prefix,
                            ttl_s=settings.idempotency_ttl_ms // 1000,
                            redelivery_window_s=2 * settings.visibility_timeout_s)


def result_store(settings: Settings, client: redis.Redis | None) -> ResultStore:
    return ResultStore(client, key_prefix=settings.redis_key_prefix,
                       ttl_s=max(1, settings.result_ttl_ms // 1000),
                       max_body_bytes=settings.result_max_bytes,
                       cipher=cipher_for(settings.encryption_keys))


@dataclass
class ProducerRuntime:
    settings: Settings
    registry: Registry
    redis: redis.Redis
    idempotency: IdempotencyStore
    results: ResultStore
    spool: RedisSpool

    def record_queued(self, job: JobSpec, seq: int) -> bool:
        """Hand the job's "queued" row to the audit spool (best effort, like every audit write).

        If Redis refuses it the row is not written from here: the producer has no database
        connection by design, and the worker's first write (`job_started`) creates the row.
        """
        op = queued_op(job.job_id, job.integration, job.method, job.path, job.params,
                       job.idempotency_key, now=datetime.now(UTC), seq=seq)
        try:
            self.spool.append([op])
        except SpoolUnavailable as exc:
            log.warning("audit_queued_not_spooled", job_id=job.job_id, error=str(exc),
                        detail="the worker's first write creates the job's audit row")
            return False
        return True


def build_producer_runtime(settings: Settings, registry: Registry,
                           client: redis.Redis) -> ProducerRuntime:
    return ProducerRuntime(
        settings=settings, registry=registry, redis=client,
        idempotency=idempotency_store(settings, client),
        results=result_store(settings, client),
        spool=RedisSpool(client, settings.redis_key_prefix,
                         max_entries=settings.audit_spool_max_entries))


_producer: ProducerRuntime | None = None
_producer_lock = threading.Lock()


def get_producer_runtime() -> ProducerRuntime:
    global _producer
    with _producer_lock:
        if _producer is None:
            settings = get_settings()
            _producer = build_producer_runtime(settings, get_registry(),
                                               redis_client(settings.redis_url))
        return _producer


def reset_producer_runtime() -> None:
    """Forget the process's producer runtime; the next enqueue builds one with fresh sockets."""
    global _producer
    with _producer_lock:
        _producer = None
