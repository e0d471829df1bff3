"""Graceful degradation: the fallback chain, tried in priority order.

`api` repeats the call against a secondary base URL under its own breaker, with the fallback's
own credentials (`headers`, `oauth`): the primary's static headers and token never go to another
origin. `cache` serves the last good answer to the very same request (method, path, params,
body and the job headers the cache lists in `vary`), kept only for the methods it lists (GET and
HEAD by default), for `ttl_ms`, and only when it is no larger than `max_body_bytes`. `default`
serves a configured value; `degraded` serves `{"status": "degraded", ...}`. Only a successful
fallback ends a job `degraded`; when every fallback fails the job goes on to the dead-letter
queue.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import redis
import requests
import structlog

from recovery.config.registry import FallbackConfig, Integration
from recovery.core.errors import classify
from recovery.core.message import JobSpec
from recovery.engine.http import send
from recovery.engine.runtime import Runtime
from recovery.state.breaker import BreakerOpenError
from recovery.state.tokens import AuthConfigError, TokenRefreshError

log = structlog.get_logger(__name__)

#: Job headers that carry a caller's identity always tell cached answers apart, listed or not:
#: one caller's answer is never another's.
ALWAYS_VARY = ("authorization", "cookie", "proxy-authorization")


@dataclass(frozen=True)
class FallbackResult:
    kind: str
    body: Any
    http_status: int | None = None


def _canonical_params(params: Mapping[str, Any] | None) -> list[list[Any]]:
    """Params as requests encodes them (None dropped, lists repeated), sorted by name."""
    canonical: list[list[Any]] = []
    for name in sorted(params or {}, key=str):
        value = (params or {})[name]
        values = value if isinstance(value, list | tuple) else [value]
        kept = [str(item) for item in values if item is not None]
        if kept:
            canonical.append([str(name), kept])
    return canonical


def _vary_values(headers: Mapping[str, str], vary: tuple[str, ...]) -> list[list[Any]]:
    by_name = {name.lower(): value for name, value in headers.items()}
    names = sorted(set(vary) | set(ALWAYS_VARY))
    return [[name, by_name.get(name)] for name in names]


def cache_key(prefix: str, integration: str, job: JobSpec, cache: FallbackConfig) -> str:
    """The Redis key of the cached answer to exactly this request.

    A digest of the method, the path, the canonical params, a hash of the JSON body and the
    values of the `vary` headers (plus ALWAYS_VARY): two requests share an answer only when
    all of these agree. The digest keeps keys short and keeps params and header values (which
    may be secrets) out of key names.
    """
    body = "" if job.json is None else hashlib.sha256(json.dumps(
        job.json, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
    request = [job.method.upper(), job.path, _canonical_params(job.params), body,
               _vary_values(job.headers, cache.vary)]
    digest = hashlib.sha256(json.dumps(request, separators=(",", ":")).encode()).hexdigest()
    return f"{prefix}cache:{integration}:{digest}"


def response_body(response: requests.Response) -> Any:
    """The JSON body if there is one, else the text."""
    try:
        return response.json()
    except ValueError:
        return response.text


def _cache_of(integration: Integration) -> FallbackConfig | None:
    return next((f for f in integration.fallbacks if f.type == "cache"), None)


def remember(rt: Runtime, integration: Integration, job: JobSpec, body: Any) -> None:
    """Keep a good answer for the `cache` fallback, if the integration has one that wants it.

    Only methods the cache lists are kept. An answer over `max_body_bytes` is not kept, and
    an older answer to the same request is dropped with it: serving it later would pass off a
    stale answer as the newest one.
    """
    cache = _cache_of(integration)
    if cache is None or rt.redis is None or job.method.upper() not in cache.methods:
        return
    key = cache_key(rt.settings.redis_key_prefix, integration.id, job, cache)
    try:
        encoded = json.dumps(body).encode()
        if len(encoded) > cache.max_body_bytes:
            rt.redis.delete(key)
            log.info("fallback_cache_skipped", integration=integration.id, bytes=len(encoded),
                     max_body_bytes=cache.max_body_bytes,
                     detail="The answer is larger than the cache's max_body_bytes.")
            return
        rt.redis.set(key, encoded, px=cache.ttl_ms)
    except (redis.RedisError, TypeError, ValueError) as exc:
        log.warning("fallback_cache_write_failed", integration=integration.id, error=str(exc))


def _secondary(integration: Integration, fb: FallbackConfig) -> Integration:
    """The integration as seen at the fallback's origin: its URL and only its credentials."""
    return replace(integration, base_url=fb.base_url or integration.base_url,
                   headers=fb.headers, oauth=fb.oauth)


def _from_api(rt: Runtime, integration: Integration, job: JobSpec, fb: FallbackConfig) -> Any:
    secondary = _secondary(integration, fb)
    token = rt.tokens.token_for(secondary)  # before the permit: a token failure spends none
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    breaker = rt.breaker(integration, scope=f":fallback:{fb.priority}")
    permit = breaker.acquire()
    try:
        response = send(
            secondary, job.method, job.path, json=job.json, params=job.params,
            headers={**job.headers, **auth, "Idempotency-Key": job.idempotency_key},
        )
    except requests.RequestException as exc:
        breaker.record(permit, success=False, counts=classify(exc).counts_against_breaker())
        raise
    if response.status_code >= 400:
        failure = classify(response=response)
        breaker.record(permit, success=False, counts=failure.counts_against_breaker())
        if response.status_code == 401 and token:
            rt.tokens.invalidate(secondary, token)
        raise LookupError(failure.message)
    breaker.record(permit, success=True)
    return FallbackResult("api", response_body(response), response.status_code)


def _from_cache(rt: Runtime, integration: Integration, job: JobSpec,
                cache: FallbackConfig) -> FallbackResult:
    if rt.redis is None:
        raise LookupError("no cache without Redis")
    if job.method.upper() not in cache.methods:
        raise LookupError(f"the cache keeps no answers to {job.method.upper()} "
                          f"(it keeps {', '.join(cache.methods)})")
    raw = rt.redis.get(cache_key(rt.settings.redis_key_prefix, integration.id, job, cache))
    if raw is None:
        raise LookupError("no cached answer to this request")
    return FallbackResult("cache", json.loads(raw))


def _serve(rt: Runtime, integration: Integration, job: JobSpec, fb: FallbackConfig) -> Any:
    if fb.type == "api":
        return _from_api(rt, integration, job, fb)
    if fb.type == "cache":
        return _from_cache(rt, integration, job, fb)
    if fb.type == "default":
        return FallbackResult("default", fb.value)
    message = fb.message or f"{integration.name} is unavailable; this is a degraded answer."
    return FallbackResult("degraded", {"status": "degraded", "integration": integration.id,
                                       "message": message})


def run_fallbacks(rt: Runtime, integration: Integration, job: JobSpec,
                  chain: tuple[FallbackConfig, ...] | None = None) -> FallbackResult | None:
    """The first fallback of `chain` (by default all, in priority order) that serves, or None
    when graceful degradation is off or all fail."""
    if not rt.settings.enable_graceful_degradation:
        return None
    for fb in integration.fallbacks if chain is None else chain:
        try:
            return _serve(rt, integration, job, fb)
        except (LookupError, BreakerOpenError, requests.RequestException, redis.RedisError,
                ValueError, TokenRefreshError, AuthConfigError) as exc:
            log.info("fallback_unavailable", integration=integration.id, fallback=fb.type,
                     priority=fb.priority, error=str(exc))
    return None


def has_fallback(rt: Runtime, integration: Integration,
                 chain: tuple[FallbackConfig, ...] | None = None) -> bool:
    chosen = integration.fallbacks if chain is None else chain
    return rt.settings.enable_graceful_degradation and bool(chosen)
