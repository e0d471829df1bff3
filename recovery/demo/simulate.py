"""`recovery-cli simulate`: one real failure scenario, recovered by the real pipeline.

Each error type gets a local upstream that misbehaves in that way, a synthetic integration
(`simulate-<type>`) and one job run in this process by
`recovery.engine.synchronous.run_synchronously`,
with the same gates, breaker, policy, fallbacks and audit trail a worker uses. The Redis keys
live under a fresh `simulate-<hex>:` prefix and are deleted afterwards; the audit rows stay, so
`recovery-cli report` shows simulations next to real traffic under their own integration ids.

A dead-lettered simulation is recorded as parked and then marked purged: it is kept out of the
real `dlq` queue, since nobody should replay a simulated request.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import redis
from sqlalchemy import inspect

from recovery.audit.queries import get_job
from recovery.config.registry import (
    BreakerConfig,
    FallbackConfig,
    Integration,
    OAuthConfig,
    RateLimitConfig,
    Registry,
    RetryConfig,
)
from recovery.config.settings import Settings, load_settings
from recovery.config.strategies import StrategyBlock
from recovery.core.message import JobSpec
from recovery.core.redact import redact_params, redact_url
from recovery.core.step import Step
from recovery.demo.faultserver import FaultServer
from recovery.dlq.envelope import Envelope
from recovery.engine.outcome import mark_failed, park_dead
from recovery.engine.producer import build_job
from recovery.engine.runtime import Runtime
from recovery.engine.synchronous import run_synchronously

#: Every error category of `recovery.core.errors.ErrorCategory`, in the original command's order.
ERROR_TYPES = ("network", "rate_limit", "server_error", "authentication", "client_error",
               "transient", "unknown", "response_too_large")
ODD_STATUS = 799
BREAKER_RESET_MS = 30_000
MAX_DEFER_MS = 2_000
DEGRADED = FallbackConfig(type="degraded", priority=1,
                          message="The simulated upstream failed; this is a degraded answer.")
PURGE_REASON = "recovery-cli simulate: a simulated dead letter is never replayed."
#: The default strategies, with rate-limit-backoff's 5 s first delay scaled down like the
#: retry block's (attempts, factor and names stay those of the table).
SCALED_STRATEGIES = MappingProxyType({"rate_limit": StrategyBlock(initial_delay_ms=100,
                                                                  max_delay_ms=1000)})

StepHook = Callable[[Step], None]


class SimulationSetupError(RuntimeError):
    """The simulation cannot run with this configuration (a sentence for the user)."""


class Upstream(Protocol):
    @property
    def url(self) -> str: ...

    def requests(self) -> list[dict[str, Any]]: ...

    def stop(self) -> None: ...


@dataclass
class Context:
    """One running simulation: what a scenario's hooks may steer."""

    upstream: Upstream
    rt: Runtime
    integration: Integration

    @property
    def fault(self) -> FaultServer:
        assert isinstance(self.upstream, FaultServer)
        return self.upstream


@dataclass(frozen=True)
class Scenario:
    error_type: str
    description: str
    trips_breaker: bool = False
    fallbacks: tuple[FallbackConfig, ...] = (DEGRADED,)
    oauth: bool = False
    method: str = "GET"
    path: str = "/orders/42"
    body: Any = None
    prepare: Callable[[Context], None] = lambda ctx: None
    after_step: Callable[[Context, int], None] = lambda ctx, number: None


def _network_after(ctx: Context, number: int) -> None:
    if number == 1:
        ctx.fault.set_script(["reset"])
        ctx.fault.up()


def _stale_token(ctx: Context) -> None:
    """Cache a token, then make the upstream forget it, as if it had expired early."""
    ctx.rt.tokens.token_for(ctx.integration)
    ctx.fault.revoke_tokens()


SCENARIOS: dict[str, Scenario] = {s.error_type: s for s in (
    Scenario("network", "The upstream is down (connection refused), then resets the "
             "connection, then answers 200.",
             prepare=lambda ctx: ctx.fault.down(), after_step=_network_after),
    Scenario("rate_limit", "The upstream answers 429 with Retry-After: 1, then 200.",
             prepare=lambda ctx: ctx.fault.set_script([429])),
    Scenario("server_error", "An outage: every call gets 503 until the circuit breaker opens "
             "on the last attempt; a degraded fallback answers.", trips_breaker=True,
             prepare=lambda ctx: ctx.fault.set_mode("5xx", status=503)),
    Scenario("authentication", "The cached OAuth token is no longer accepted (401); the token "
             "is refreshed and the call repeated.", oauth=True, prepare=_stale_token),
    Scenario("client_error", "The upstream rejects the request with 400; client errors are "
             "not retried and get no fallback.", method="POST", path="/orders",
             body={"sku": "", "quantity": 0}, prepare=lambda ctx: ctx.fault.set_script([400])),
    Scenario("transient", "The upstream answers 408, then 503, then 200.",
             prepare=lambda ctx: ctx.fault.set_script([408, 503])),
    Scenario("unknown", f"The upstream answers a status no taxonomy knows ({ODD_STATUS}); it is "
             "not retried and, with no fallback configured, it is dead-lettered.",
             fallbacks=()),
    Scenario("response_too_large", "The upstream answers 20 MiB, over the 10 MiB "
             "max_response_bytes; reading stops, it is not retried, no fallback hides it, and "
             "it is dead-lettered.", prepare=lambda ctx: ctx.fault.set_mode("huge")),
)}


@dataclass
class SimulationResult:
    """The original design's recovery result, plus where it came from.

    `strategy` is the one the first failure engaged (the final step's when nothing failed);
    `attempts` counts attempt numbers, `calls` the HTTP calls in the audit trail (a token
    refresh repeats the call within one attempt).
    """

    error_type: str
    description: str
    integration: str
    mode: str
    upstream_url: str
    redis_prefix: str
    job_id: str
    outcome: str
    success: bool
    strategy: str | None
    attempts: int
    calls: int
    upstream_requests: int
    recovery_time_ms: int
    fallback_used: str | None
    breaker_tripped: bool
    queued_for_later: bool
    http_status: int | None
    reason: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OddStatusServer:
    """A local upstream that answers every request with a status outside HTTP's classes."""

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="odd-status-upstream", daemon=True).start()

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record) for record in self._records]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with owner._lock:
                    owner._records.append({"method": self.command, "path": self.path,
                                           "status": ODD_STATUS})
                payload = b'{"odd": true}'
                self.send_response(ODD_STATUS, "Odd Status")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler


def build_integration(scenario: Scenario, integration_id: str, upstream_url: str,
                      max_attempts: int, secret_env: str | None) -> Integration:
    """The synthetic integration: short backoff, and a breaker that trips only when meant to."""
    threshold = max_attempts if scenario.trips_breaker else max_attempts + 1
    oauth = None
    if secret_env is not None:
        oauth = OAuthConfig(token_url=f"{upstream_url}/oauth/token", client_id="simulate",
                            client_secret_env=secret_env)
    return Integration(
        id=integration_id, name=f"Simulated {scenario.error_type} upstream",
        base_url=upstream_url, timeout_ms=2000,
        retry=RetryConfig(max_attempts=max_attempts, initial_delay_ms=100, backoff_factor=2,
                          max_delay_ms=1000, jitter=0.0),
        circuit_breaker=BreakerConfig(enabled=True, threshold=threshold,
                                      reset_timeout_ms=BREAKER_RESET_MS, call_timeout_ms=2000),
        fallbacks=scenario.fallbacks, health_check=None,
        rate_limit=RateLimitConfig(window_ms=1000, max_requests=1000),
        headers=MappingProxyType({}), oauth=oauth, strategies=SCALED_STRATEGIES)


def simulation_settings(environ: Mapping[str, str], prefix: str,
                        database_url: str | None = None) -> Settings:
    """The configured settings with the simulation's key prefix and every recovery feature on."""
    env = {key: value for key, value in environ.items() if key != "RECOVERY_INTEGRATIONS"}
    env.update({"RECOVERY_REDIS_PREFIX": prefix, "DLQ_ENABLED": "true",
                "ENABLE_CIRCUIT_BREAKER": "true", "ENABLE_GRACEFUL_DEGRADATION": "true",
                "MAX_DEFER_WINDOW": str(MAX_DEFER_MS)})
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return load_settings(env)


def _runtime(mode: str, environ: Mapping[str, str], prefix: str, registry: Registry,
             workdir: Path) -> Runtime:
    # Imported when a simulation starts: only it needs a runtime of its own.
    from recovery.engine.runtime import build_runtime
    from recovery.state.connection import redis_client

    if mode == "embedded":
        # Imported when a simulation starts: only it needs a runtime of its own.
        from recovery.audit.db import upgrade
        from recovery.demo.embedded import embedded_runtime

        url = f"sqlite:///{workdir / 'audit.sqlite3'}"
        upgrade(url)
        return embedded_runtime(simulation_settings(environ, prefix, url), registry)
    settings = simulation_settings(environ, prefix)
    rt = build_runtime(settings, registry, redis_client(settings.redis_url))
    if not inspect(rt.engine).has_table("jobs"):
        rt.engine.dispose()
        raise SimulationSetupError(
            f"The audit database {redact_url(rt.settings.database_url)} has no audit tables; "
            "run 'recovery-cli db upgrade' first, or pass --embedded.")
    return rt


def simulate(error_type: str, max_attempts: int = 3, *, mode: str = "services",
             environ: Mapping[str, str] | None = None,
             on_step: StepHook | None = None) -> SimulationResult:
    """Run one scenario end to end and return what the recovery did."""
    scenario = SCENARIOS.get(error_type)
    if scenario is None:
        raise ValueError(f"Unknown error type {error_type!r}; use one of {', '.join(ERROR_TYPES)}.")
    if max_attempts < 1:
        raise ValueError(f"--max-attempts must be at least 1, got {max_attempts}.")
    env = dict(os.environ if environ is None else environ)
    token = uuid.uuid4().hex[:10]
    secret_env = f"RECOVERY_SIMULATE_SECRET_{token.upper()}" if scenario.oauth else None
    upstream = _start_upstream(scenario, secret_env)
    try:
        with tempfile.TemporaryDirectory(prefix="recovery-simulate-") as tmp:
            integration = build_integration(scenario, f"simulate-{error_type.replace('_', '-')}",
                                            upstream.url, max_attempts, secret_env)
            rt = _runtime(mode, env, f"simulate-{token}:", Registry(
                [integration], source="recovery-cli simulate"), Path(tmp))
            try:
                ctx = Context(upstream, rt, integration)
                return _run(scenario, ctx, mode, on_step)
            finally:
                _close(rt)
    finally:
        upstream.stop()
        if secret_env is not None:
            os.environ.pop(secret_env, None)


def _start_upstream(scenario: Scenario, secret_env: str | None) -> Upstream:
    if scenario.error_type == "unknown":
        return OddStatusServer()
    secret = None
    if secret_env is not None:
        secret = uuid.uuid4().hex
        os.environ[secret_env] = secret  # read at call time by recovery.state.tokens.fetch_token
    return FaultServer(mode="auth" if scenario.oauth else "ok", client_secret=secret).start()


def _run(scenario: Scenario, ctx: Context, mode: str, on_step: StepHook | None) -> SimulationResult:
    rt, integration = ctx.rt, ctx.integration
    job = build_job(rt.registry, integration.id, scenario.method, scenario.path,
                    json=scenario.body)
    rt.audit.job_queued(job.job_id, job.integration, job.method, job.path,
                        redact_params(job.params or {}), job.idempotency_key)
    scenario.prepare(ctx)
    taken: list[Step] = []

    def hook(step: Step) -> None:
        taken.append(step)
        scenario.after_step(ctx, len(taken))
        if on_step is not None:
            on_step(step)

    started = time.monotonic()
    final = run_synchronously(job, rt, on_step=hook)[-1]
    elapsed_ms = round((time.monotonic() - started) * 1000)
    queued = _finish(rt, job, final)
    return _result(scenario, ctx, mode, job, final, taken, elapsed_ms, queued)


def _finish(rt: Runtime, job: JobSpec, final: Step) -> bool:
    """Record the final state a worker would record; True when the job was dead-lettered."""
    if final.status == "dead":
        kept: list[Envelope] = []
        park_dead(rt, job, final, sink=kept.append)
        rt.audit.dead_letter_state(job.job_id, "purged", PURGE_REASON)
        return True
    if final.status == "failed":
        mark_failed(rt, job, final)
    return False


def _result(scenario: Scenario, ctx: Context, mode: str, job: JobSpec, final: Step,
            taken: list[Step], elapsed_ms: int, queued: bool) -> SimulationResult:
    audited = get_job(ctx.rt.engine, job.job_id) or {"attempts": []}
    calls = [row for row in audited["attempts"] if row["kind"] == "call"]
    strategy = next((row["strategy"] for row in calls
                     if row["decision"] != "done" and row["strategy"]), final.strategy)
    snapshot = ctx.rt.breaker(ctx.integration).snapshot()
    api_requests = [r for r in ctx.upstream.requests()
                    if not str(r["path"]).startswith(("/oauth/", "/health"))]
    return SimulationResult(
        error_type=scenario.error_type, description=scenario.description,
        integration=ctx.integration.id, mode=mode, upstream_url=ctx.upstream.url,
        redis_prefix=ctx.rt.settings.redis_key_prefix,
        job_id=job.job_id, outcome=final.status,
        success=final.status in ("succeeded", "degraded"), strategy=strategy,
        attempts=final.attempts, calls=len(calls),
        upstream_requests=len(api_requests), recovery_time_ms=elapsed_ms,
        fallback_used=final.fallback,
        breaker_tripped=snapshot.state in ("open", "half_open") or snapshot.opened_at is not None,
        queued_for_later=queued, http_status=final.http_status, reason=final.reason,
        steps=[{"status": s.status, "attempts": s.attempts, "countdown_s": s.countdown_s,
                "http_status": s.http_status, "strategy": s.strategy, "reason": s.reason}
               for s in taken])


def _close(rt: Runtime) -> None:
    """Delete the simulation's Redis keys and release its connections."""
    if rt.redis is not None:
        prefix = rt.settings.redis_key_prefix
        with contextlib.suppress(redis.RedisError):
            keys = set(rt.redis.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                rt.redis.delete(*keys)
        rt.redis.close()
    rt.engine.dispose()
