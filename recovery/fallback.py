"""Graceful degradation: the fallback chain, tried in priority order.

`api` repeats the call against a secondary base URL under its own breaker; `cache` serves the
last good response for the same integration, method and path; `default` serves a configured
value; `degraded` serves `{"status": "degraded", ...}`. Only a successful fallback ends a job
`degraded`; when every fallback fails the job goes on to the dead-letter queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import redis
import requests
import structlog

from recovery.breaker import BreakerOpenError
from recovery.errors import classify
from recovery.http import send
from recovery.jobs import JobSpec
from recovery.registry import FallbackConfig, Integration
from recovery.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FallbackResult:
    kind: str
    body: Any
    http_status: int | None = None


def cache_key(prefix: str, integration: str, method: str, path: str) -> str:
    return f"{prefix}cache:{integration}:{method.upper()}:{path}"


def response_body(response: requests.Response) -> Any:
    """The JSON body if there is one, else the text."""
    try:
        return response.json()
    except ValueError:
        return response.text


def remember(rt: Runtime, integration: Integration, job: JobSpec, body: Any) -> None:
    """Keep the last good response for the `cache` fallback, if the integration has one."""
    cache = next((f for f in integration.fallbacks if f.type == "cache"), None)
    if cache is None or rt.redis is None:
        return
    key = cache_key(rt.settings.redis_key_prefix, integration.id, job.method, job.path)
    try:
        rt.redis.set(key, json.dumps(body), px=cache.ttl_ms)
    except (redis.RedisError, TypeError, ValueError) as exc:
        log.warning("fallback_cache_write_failed", integration=integration.id, error=str(exc))


def _from_api(rt: Runtime, integration: Integration, job: JobSpec, fb: FallbackConfig) -> Any:
    secondary = replace(integration, base_url=fb.base_url or integration.base_url)
    breaker = rt.breaker(integration, scope=f":fallback:{fb.priority}")
    permit = breaker.acquire()
    try:
        response = send(
            secondary, job.method, job.path, json=job.json, params=job.params,
            headers={**job.headers, "Idempotency-Key": job.idempotency_key},
        )
    except requests.RequestException as exc:
        breaker.record(permit, success=False, counts=classify(exc).counts_against_breaker())
        raise
    if response.status_code >= 400:
        failure = classify(response=response)
        breaker.record(permit, success=False, counts=failure.counts_against_breaker())
        raise LookupError(failure.message)
    breaker.record(permit, success=True)
    return FallbackResult("api", response_body(response), response.status_code)


def _from_cache(rt: Runtime, integration: Integration, job: JobSpec) -> FallbackResult:
    if rt.redis is None:
        raise LookupError("no cache without Redis")
    key = cache_key(rt.settings.redis_key_prefix, integration.id, job.method, job.path)
    raw = rt.redis.get(key)
    if raw is None:
        raise LookupError("no cached response")
    return FallbackResult("cache", json.loads(raw))


def _serve(rt: Runtime, integration: Integration, job: JobSpec, fb: FallbackConfig) -> Any:
    if fb.type == "api":
        return _from_api(rt, integration, job, fb)
    if fb.type == "cache":
        return _from_cache(rt, integration, job)
    if fb.type == "default":
        return FallbackResult("default", fb.value)
    message = fb.message or f"{integration.name} is unavailable; this is a degraded answer."
    return FallbackResult("degraded", {"status": "degraded", "integration": integration.id,
                                       "message": message})


def run_fallbacks(rt: Runtime, integration: Integration, job: JobSpec) -> FallbackResult | None:
    """The first fallback that serves, or None when graceful degradation is off or all fail."""
    if not rt.settings.enable_graceful_degradation:
        return None
    for fb in integration.fallbacks:
        try:
            return _serve(rt, integration, job, fb)
        except (LookupError, BreakerOpenError, requests.RequestException, redis.RedisError,
                ValueError) as exc:
            log.info("fallback_unavailable", integration=integration.id, fallback=fb.type,
                     priority=fb.priority, error=str(exc))
    return None


def has_fallback(rt: Runtime, integration: Integration) -> bool:
    return rt.settings.enable_graceful_degradation and bool(integration.fallbacks)
