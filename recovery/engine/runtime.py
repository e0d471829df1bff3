"""The per-process set of collaborators a job needs, built once from settings.

Everything here holds sockets (Redis, PostgreSQL, HTTP pools), so a forked worker process
rebuilds it (`reset_runtime` runs on Celery's `worker_process_init`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

import redis
import structlog
from sqlalchemy.engine import Engine

from recovery.audit.db import make_engine
from recovery.audit.writer import AuditWriter, make_audit_writer
from recovery.config.loader import get_registry
from recovery.config.registry import Integration, Registry
from recovery.config.settings import Settings, get_settings
from recovery.engine.events import EventBus, standard_bus
from recovery.engine.gate import Gate
from recovery.engine.producer_runtime import (
    idempotency_store,
    reset_producer_runtime,
    result_store,
)
from recovery.state.breaker import ClusterBreaker
from recovery.state.budget import RetryBudget
from recovery.state.connection import redis_client
from recovery.state.idempotency import IdempotencyStore
from recovery.state.ratelimit import ClusterRateLimiter
from recovery.state.results import ResultStore
from recovery.state.tokens import TokenProvider
from recovery.telemetry import alerts, metrics

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    settings: Settings
    registry: Registry
    redis: redis.Redis | None
    engine: Engine
    audit: AuditWriter
    limiter: ClusterRateLimiter
    tokens: TokenProvider
    idempotency: IdempotencyStore
    budget: RetryBudget
    results: ResultStore
    _breakers: dict[str, ClusterBreaker] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: The folded pre- and post-call Redis decisions over these components (it opens its
    #: connections on first use).
    gate: Gate = field(init=False)
    #: What the pipeline reports (audit, metrics, alerts, Sentry subscribe: `engine.events`).
    events: EventBus = field(init=False)

    def __post_init__(self) -> None:
        self.gate = Gate(self.redis, self.idempotency, self.limiter, self.budget, self.breaker)
        self.events = standard_bus(lambda: self.audit)

    def breaker(self, integration: Integration, *, scope: str = "") -> ClusterBreaker:
        """The cluster breaker for an integration (or one of its fallback APIs, by scope)."""
        name = f"{integration.id}{scope}"
        with self._lock:
            found = self._breakers.get(name)
            if found is None:
                config = integration.circuit_breaker
                if not self.settings.enable_circuit_breaker:
                    config = replace(config, enabled=False)
                found = ClusterBreaker(
                    self.redis,
                    name,
                    config,
                    key_prefix=self.settings.redis_key_prefix,
                    listeners=[self._record_transition],
                )
                self._breakers[name] = found
            return found

    def _record_transition(
        self, integration: str, from_state: str, to_state: str, reason: str, at: datetime
    ) -> None:
        log.warning(
            "breaker_transition",
            integration=integration,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
        )
        self.audit.breaker_transition(integration, from_state, to_state, reason, at=at)
        for hook in _transition_hooks:
            hook(integration, from_state, to_state, reason, at)


_transition_hooks: list[Callable[[str, str, str, str, datetime], None]] = []
_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def _current_redis() -> redis.Redis | None:
    return get_runtime().redis


def _current_audit() -> AuditWriter:
    return get_runtime().audit


def on_breaker_transition(hook: Callable[[str, str, str, str, datetime], None]) -> None:
    """Register a callable told of every breaker transition this process makes (alerts)."""
    _transition_hooks.append(hook)


def build_runtime(settings: Settings, registry: Registry,
                  client: redis.Redis | None) -> Runtime:
    """The collaborators for a process; with `client` None every shared state is in-process."""
    engine = make_engine(settings.database_url)
    prefix = settings.redis_key_prefix
    return Runtime(
        settings=settings,
        registry=registry,
        redis=client,
        engine=engine,
        audit=make_audit_writer(engine, client, prefix,
                                spool_max_entries=settings.audit_spool_max_entries),
        limiter=ClusterRateLimiter(client, key_prefix=prefix),
        tokens=TokenProvider(client, key_prefix=prefix),
        idempotency=idempotency_store(settings, client),
        budget=RetryBudget(client, key_prefix=prefix),
        results=result_store(settings, client),
    )


def get_runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            settings = get_settings()
            _runtime = build_runtime(settings, get_registry(), redis_client(settings.redis_url))
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a prepared runtime (the demo's embedded mode, tests)."""
    global _runtime
    with _runtime_lock:
        _runtime = runtime


def reset_runtime() -> None:
    """Forget the process's runtime and its producer runtime; the next job or enqueue builds a
    fresh one with fresh sockets."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.audit.close()
            _runtime.engine.dispose(close=False)
            _runtime.gate.close()
        _runtime = None
    reset_producer_runtime()


# Telemetry sits below the engine: it learns where the runtime's Redis and audit writer are,
# and hears of breaker transitions, through these registrations rather than importing us.
metrics.set_redis_source(_current_redis)
alerts.set_audit_source(_current_audit)
on_breaker_transition(alerts.breaker_transition_hook)
