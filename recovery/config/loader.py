"""Reading the integrations YAML file (RECOVERY_INTEGRATIONS) into a validated Registry.

The document is validated with the models of `recovery.config.file_models` (every key's type,
range and choice), then the checks that need other keys or the environment run here and the
`Integration`s are built, missing keys taking the environment's defaults (Settings). Every
refusal is a `RegistryError` sentence naming the file, the integration and the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import ValidationError

from recovery.config.audit_policy import HIDE_ALL, AuditPolicy
from recovery.config.budget import DEFAULT_RETRY_BUDGET, RetryBudgetConfig
from recovery.config.file_errors import Where, first_problem
from recovery.config.file_models import (
    ENV_NAME,
    HEADER_NAME,
    ID,
    ApiFallback,
    AuditModel,
    BreakerModel,
    CacheFallback,
    DefaultFallback,
    Fallback,
    HealthCheckModel,
    IntegrationModel,
    IntegrationsSection,
    OAuthModel,
    RateLimitModel,
    RetryBudgetModel,
    RetryModel,
)
from recovery.config.registry import (
    DEFAULT_CACHE_METHODS,
    DEFAULT_CACHE_TTL_MS,
    DEFAULT_HALF_OPEN_CALLS,
    DEFAULT_HEALTH_ENDPOINT,
    DEFAULT_HEALTH_FAILURES,
    DEFAULT_JITTER,
    DEFAULT_MINIMUM_CALLS,
    DEFAULT_RATE_WINDOW_MS,
    DEFAULT_RESET_BACKOFF_FACTOR,
    DEFAULT_RESET_CAP_MULTIPLE,
    BreakerConfig,
    FallbackConfig,
    HealthCheckConfig,
    Integration,
    OAuthConfig,
    RateLimitConfig,
    Registry,
    RegistryError,
    RetryConfig,
    primary_integration,
)
from recovery.config.settings import Settings, get_settings
from recovery.config.strategies import build_strategies
from recovery.config.urlguard import (
    MAX_HEADER_BYTES,
    UnsafeHeaderError,
    is_header_value_text,
    validate_headers,
)
from recovery.config.yamlconfig import read_yaml, show_value

T = TypeVar("T")
_ENV_REF = re.compile(r"\$\{([^}]*)\}")

_MISSING_HINT = (
    "the integrations file named by RECOVERY_INTEGRATIONS does not exist; create it, or unset "
    "RECOVERY_INTEGRATIONS to use primary-api from the environment"
)


def _given(value: T | None, fallback: T) -> T:
    return fallback if value is None else value


def _retry(m: RetryModel, settings: Settings) -> RetryConfig:
    return RetryConfig(
        max_attempts=_given(m.max_attempts, settings.max_retries),
        initial_delay_ms=_given(m.initial_delay_ms, settings.retry_delay_ms),
        backoff_factor=_given(m.backoff_factor, settings.retry_backoff_factor),
        max_delay_ms=_given(m.max_delay_ms, settings.retry_max_delay_ms),
        jitter=_given(m.jitter, DEFAULT_JITTER),
    )


def _breaker(m: BreakerModel, where: Where, settings: Settings) -> BreakerConfig:
    reset_ms = _given(m.reset_timeout_ms, settings.circuit_breaker_reset_timeout_ms)
    cap_ms = m.max_reset_timeout_ms
    if cap_ms is not None and cap_ms < reset_ms:
        where.fail("max_reset_timeout_ms", f"must be at least reset_timeout_ms ({reset_ms} ms), "
                                           f"got {cap_ms}; raise it or lower reset_timeout_ms")
    return BreakerConfig(
        enabled=_given(m.enabled, settings.enable_circuit_breaker),
        threshold=_given(m.threshold, settings.circuit_breaker_threshold),
        reset_timeout_ms=reset_ms,
        call_timeout_ms=_given(m.call_timeout_ms, settings.circuit_breaker_timeout_ms),
        half_open_max_calls=_given(m.half_open_max_calls, DEFAULT_HALF_OPEN_CALLS),
        failure_rate=m.failure_rate,
        window_ms=_given(m.window_ms, DEFAULT_RATE_WINDOW_MS),
        minimum_calls=_given(m.minimum_calls, DEFAULT_MINIMUM_CALLS),
        reset_backoff_factor=_given(m.reset_backoff_factor, DEFAULT_RESET_BACKOFF_FACTOR),
        max_reset_timeout_ms=cap_ms,
    )


def _fallback(m: Fallback, position: int, where: Where, settings: Settings,
              environ: Mapping[str, str]) -> FallbackConfig:
    entry = FallbackConfig(type=m.type, priority=_given(m.priority, position))
    if isinstance(m, ApiFallback):
        return replace(entry, base_url=m.base_url, headers=_headers(m.headers, where, environ),
                       oauth=_oauth(m.oauth, where.below("oauth"), environ))
    if isinstance(m, CacheFallback):
        return replace(entry, ttl_ms=_given(m.ttl_ms, DEFAULT_CACHE_TTL_MS),
                       methods=tuple(m.methods or DEFAULT_CACHE_METHODS), vary=tuple(m.vary or ()),
                       max_body_bytes=_given(m.max_body_bytes, settings.cache_max_body_bytes))
    if isinstance(m, DefaultFallback):
        return replace(entry, value=m.value)
    return replace(entry, message=m.message)


def _fallbacks(models: list[Fallback] | None, where: Where, settings: Settings,
               environ: Mapping[str, str]) -> tuple[FallbackConfig, ...]:
    entries = [_fallback(m, number, where.below(f"fallbacks[{number}]"), settings, environ)
               for number, m in enumerate(models or (), 1)]
    return tuple(sorted(entries, key=lambda f: f.priority))


def _health(m: HealthCheckModel | None, settings: Settings) -> HealthCheckConfig | None:
    if m is None:
        return None
    return HealthCheckConfig(
        endpoint=_given(m.endpoint, DEFAULT_HEALTH_ENDPOINT),
        interval_ms=_given(m.interval_ms, settings.health_check_interval_ms),
        timeout_ms=_given(m.timeout_ms, settings.health_check_timeout_ms),
        failure_threshold=_given(m.failure_threshold, DEFAULT_HEALTH_FAILURES),
    )


def _resolve(where: Where, key: str, template: str, environ: Mapping[str, str]) -> str:
    """Replace every ${NAME} in `template` with the variable's value from `environ`."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if not ENV_NAME.fullmatch(name):
            where.fail(key, f"refers to ${{{name}}}, which is not a valid environment variable "
                            "name")
        if name not in environ:
            where.fail(key, f"refers to ${{{name}}}, which is not set in the environment; "
                            "set it before starting or remove the reference")
        return environ[name]

    return _ENV_REF.sub(lookup, template)


def _headers(templates: Mapping[str, str] | None, where: Where,
             environ: Mapping[str, str]) -> Mapping[str, str]:
    """The static headers with ${NAME} resolved, held to the rules of a job's headers, so a
    header that cannot be sent is refused now rather than at every call. Messages never show a
    value: a resolved ${NAME} is usually a secret."""
    headers: dict[str, str] = {}
    for name, template in (templates or {}).items():
        key = f"headers.{name}"
        if not HEADER_NAME.fullmatch(name):
            where.fail(key, "is not a valid HTTP header name")
        _check_header(where, key, name)
        value = _resolve(where, key, template, environ)
        _check_header_value(where, key, value)
        headers[name] = value
    try:
        validate_headers(headers)
    except UnsafeHeaderError as exc:
        where.fail("headers", f"is refused: {_lower_first(str(exc)).rstrip('.')}")
    return MappingProxyType(headers)


def _check_header(where: Where, key: str, name: str) -> None:
    try:
        validate_headers({name: ""})
    except UnsafeHeaderError as exc:
        where.fail(key, f"is refused: {_lower_first(str(exc)).rstrip('.')}")


def _check_header_value(where: Where, key: str, value: str) -> None:
    if any((ord(ch) < 32 and ch != "\t") or ord(ch) == 127 for ch in value):
        where.fail(key, "has a value containing a line break or control character, which "
                        "would let it inject other headers")
    if not is_header_value_text(value):
        where.fail(key, "has a value with characters outside visible ASCII (not shown: it may "
                        "be a secret); header values may hold only visible ASCII, spaces and "
                        "tabs")
    if len(value) > MAX_HEADER_BYTES:
        where.fail(key, f"has a value of {len(value)} characters; the limit is "
                        f"{MAX_HEADER_BYTES} bytes (8 KiB)")


def _lower_first(sentence: str) -> str:
    return sentence[:1].lower() + sentence[1:]


def _oauth(m: OAuthModel | None, where: Where,
           environ: Mapping[str, str]) -> OAuthConfig | None:
    if m is None:
        return None
    if m.client_secret_env not in environ:
        where.fail("client_secret_env", f"names {m.client_secret_env}, which is not set in the "
                                        "environment; set it before starting")
    return OAuthConfig(m.token_url, m.client_id, m.client_secret_env, m.scope)


def _retry_budget(m: RetryBudgetModel) -> RetryBudgetConfig:
    default = DEFAULT_RETRY_BUDGET
    return RetryBudgetConfig(
        enabled=_given(m.enabled, default.enabled),
        ratio=_given(m.ratio, default.ratio),
        floor=_given(m.floor, default.floor),
        window_ms=_given(m.window_ms, default.window_ms),
    )


def _audit(m: AuditModel | None, where: Where) -> AuditPolicy:
    """What displays may show of this integration's requests (nothing but names by default)."""
    if m is None:
        return HIDE_ALL
    try:
        return AuditPolicy.of(m.show_params or (), m.show_headers or (), m.show_body_fields or ())
    except ValueError as exc:
        where.fail("show_headers", str(exc))


def _check_countdowns(integration: Integration, where: Where, settings: Settings) -> None:
    """Every countdown must stay below the broker visibility timeout, or Redis redelivers."""
    limit_s = settings.visibility_timeout_s
    breaker = integration.circuit_breaker
    cap_note = "" if breaker.max_reset_timeout_ms is not None else (
        f" (by default {DEFAULT_RESET_CAP_MULTIPLE} x reset_timeout_ms)")
    for key, millis, note in (
        ("retry.max_delay_ms", integration.retry.max_delay_ms, ""),
        ("circuit_breaker.reset_timeout_ms", breaker.reset_timeout_ms, ""),
        ("circuit_breaker.max_reset_timeout_ms", breaker.reset_cap_ms, cap_note),
        ("rate_limit.window_ms", integration.rate_limit.window_ms, ""),
        ("retry_budget.window_ms", integration.retry_budget.window_ms, ""),
    ):
        if millis / 1000 >= limit_s:
            where.fail(key, f"is {millis} ms{note}, which is not below REDIS_VISIBILITY_TIMEOUT "
                            f"({limit_s} s): Redis would redeliver a job waiting that long and it "
                            f"would run twice. Lower {key} or raise REDIS_VISIBILITY_TIMEOUT to "
                            f"at least {millis // 1000 + 1} seconds")


def _integration(m: IntegrationModel, where: Where, settings: Settings,
                 environ: Mapping[str, str]) -> Integration:
    rate = m.rate_limit or RateLimitModel()
    integration = Integration(
        id=m.id,
        name=_given(m.name, m.id),
        base_url=m.base_url,
        timeout_ms=_given(m.timeout_ms, settings.api_timeout_ms),
        retry=_retry(m.retry or RetryModel(), settings),
        circuit_breaker=_breaker(m.circuit_breaker or BreakerModel(),
                                 where.below("circuit_breaker"), settings),
        fallbacks=_fallbacks(m.fallbacks, where, settings, environ),
        health_check=_health(m.health_check, settings),
        rate_limit=RateLimitConfig(
            window_ms=_given(rate.window_ms, settings.rate_limit_window_ms),
            max_requests=_given(rate.max_requests, settings.rate_limit_max_requests),
        ),
        headers=_headers(m.headers, where, environ),
        oauth=_oauth(m.oauth, where.below("oauth"), environ),
        retry_budget=_retry_budget(m.retry_budget or RetryBudgetModel()),
        audit=_audit(m.audit, where.below("audit")),
        max_response_bytes=_given(m.max_response_bytes, settings.max_response_bytes),
        deadline_ms=m.deadline_ms,
    )
    _check_countdowns(integration, where, settings)
    strategies = build_strategies(m.strategies, where, tuple(f.type for f in integration.fallbacks),
                                  settings.visibility_timeout_s)
    return replace(integration, strategies=MappingProxyType(strategies))


def _check_top_level(document: Any, path: str) -> None:
    """The file's shape, refused in words the models' errors cannot say."""
    if not isinstance(document, Mapping) or "integrations" not in document:
        raise RegistryError(f"{path}: the top level must be a mapping with an 'integrations' "
                            f"list, got {show_value(document)}.")
    extra = sorted(str(key) for key in document if key not in ("integrations", "workflows"))
    if extra:  # workflows: read by recovery.config.workflow_file
        raise RegistryError(f"{path}: unknown top-level key {extra[0]!r} "
                            "(known keys: integrations, workflows).")
    entries = document["integrations"]
    if not isinstance(entries, list) or not entries:
        raise RegistryError(f"{path}: 'integrations' must be a non-empty list of integrations, "
                            f"got {show_value(entries)}.")


def _refusal(error: ValidationError, entries: list[Any], path: str) -> RegistryError:
    """The first problem the models found, as a sentence naming the file, entry and key."""
    problem = first_problem(error, {"integrations": entries})
    number = int(problem.place[1])
    entry = entries[number]
    where = f"{path}: integration #{number + 1}"
    if len(problem.place) == 2:
        return RegistryError(f"{where} must be a mapping with keys such as id and base_url, "
                             f"got {show_value(entry)}.")
    ident = entry.get("id")
    if problem.place[2:] == ("id",):
        hint = "; give every integration an id such as 'payments'" if problem.missing else ""
        return RegistryError(f"{where}: {problem.tail(2)}{hint}.")
    if isinstance(ident, str) and ID.fullmatch(ident):
        where = f"{path}: integration {ident!r}"
    return RegistryError(f"{where}: {problem.tail(2)}.")


def _read_integrations(document: Any, path: str) -> list[IntegrationModel]:
    """The validated integrations of a parsed integrations file (its workflows are not read)."""
    _check_top_level(document, path)
    entries = document["integrations"]
    try:
        section = IntegrationsSection.model_validate({"integrations": entries})
    except ValidationError as exc:
        raise _refusal(exc, entries, path) from None
    seen: dict[str, int] = {}
    for number, model in enumerate(section.integrations, 1):
        if model.id in seen:
            raise RegistryError(f"{path}: integration {model.id!r} is defined twice "
                                f"(#{seen[model.id]} and #{number}); give each integration its "
                                "own id.")
        seen[model.id] = number
    return section.integrations


def load_file(path: str, settings: Settings, environ: Mapping[str, str]) -> Registry:
    """Load and validate the integrations file at `path`."""
    models = _read_integrations(read_yaml(path, RegistryError, _MISSING_HINT), path)
    return Registry([
        _integration(m, Where(path, f"integration {m.id!r}", RegistryError), settings, environ)
        for m in models])


def load_registry(settings: Settings, environ: Mapping[str, str] | None = None) -> Registry:
    """The registry from `settings.integrations_file`, or the environment's `primary-api`."""
    env = os.environ if environ is None else environ
    if settings.integrations_file:
        return load_file(settings.integrations_file, settings, env)
    return Registry([primary_integration(settings)])


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry, loaded on first use from the current settings."""
    return load_registry(get_settings())


def reset_registry() -> None:
    """Forget the cached registry so the next `get_registry()` loads it again."""
    get_registry.cache_clear()
