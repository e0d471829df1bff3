"""Reading the integrations YAML file (RECOVERY_INTEGRATIONS) into a validated Registry.

Every key is checked for its type and range; a `RegistryError` names the file, the integration
and the key. Missing keys take the environment's defaults (Settings).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from recovery.config.audit_policy import HIDE_ALL, AuditPolicy
from recovery.config.budget import (
    DEFAULT_RETRY_BUDGET,
    MAX_RATIO,
    MAX_WINDOW_MS,
    MIN_WINDOW_MS,
    RetryBudgetConfig,
)
from recovery.config.registry import (
    DEFAULT_CACHE_METHODS,
    DEFAULT_CACHE_TTL_MS,
    DEFAULT_JITTER,
    DEFAULT_RESET_BACKOFF_FACTOR,
    DEFAULT_RESET_CAP_MULTIPLE,
    FALLBACK_TYPES,
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
from recovery.config.settings import (
    MAX_BYTES,
    Settings,
    base_url_problem,
    get_settings,
    is_http_url,
    shown_base_url,
)
from recovery.config.strategies import parse_strategies
from recovery.config.urlguard import (
    MAX_HEADER_BYTES,
    UnsafeHeaderError,
    UnsafePathError,
    is_header_value_text,
    validate_headers,
    validate_path,
)
from recovery.config.yamlconfig import Section, read_yaml, show_value

_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REF = re.compile(r"\$\{([^}]*)\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

_MISSING_HINT = (
    "the integrations file named by RECOVERY_INTEGRATIONS does not exist; create it, or unset "
    "RECOVERY_INTEGRATIONS to use primary-api from the environment"
)
_INTEGRATION_KEYS = (
    "id", "name", "base_url", "timeout_ms", "retry", "circuit_breaker", "fallbacks",
    "health_check", "rate_limit", "headers", "oauth", "retry_budget", "audit",
    "max_response_bytes", "deadline_ms", "strategies",
)
_RETRY_KEYS = ("max_attempts", "initial_delay_ms", "backoff_factor", "max_delay_ms", "jitter")
_BREAKER_KEYS = (
    "enabled", "threshold", "reset_timeout_ms", "call_timeout_ms", "half_open_max_calls",
    "failure_rate", "window_ms", "minimum_calls", "reset_backoff_factor", "max_reset_timeout_ms",
)
_FALLBACK_EXTRA_KEYS = {"api": ("base_url", "headers", "oauth"),
                        "cache": ("ttl_ms", "methods", "vary", "max_body_bytes"),
                        "default": ("value",), "degraded": ("message",)}
_HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
_HEALTH_KEYS = ("endpoint", "interval_ms", "timeout_ms", "failure_threshold")
_RATE_KEYS = ("window_ms", "max_requests")
_OAUTH_KEYS = ("token_url", "client_id", "client_secret_env", "scope")
_BUDGET_KEYS = ("enabled", "ratio", "floor", "window_ms")
_AUDIT_KEYS = ("show_params", "show_headers", "show_body_fields")
_BODY_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")


def _retry(s: Section, settings: Settings) -> RetryConfig:
    return RetryConfig(
        max_attempts=s.count("max_attempts", settings.max_retries),
        initial_delay_ms=s.millis("initial_delay_ms", settings.retry_delay_ms, minimum=0),
        backoff_factor=s.number("backoff_factor", settings.retry_backoff_factor, 1.0, 100.0),
        max_delay_ms=s.millis("max_delay_ms", settings.retry_max_delay_ms),
        jitter=s.fraction_or_flag("jitter", DEFAULT_JITTER),
    )


def _breaker(s: Section, settings: Settings) -> BreakerConfig:
    rate = s.get("failure_rate")
    reset_ms = s.millis("reset_timeout_ms", settings.circuit_breaker_reset_timeout_ms)
    cap_ms = None if s.get("max_reset_timeout_ms") is None else s.millis(
        "max_reset_timeout_ms", reset_ms)
    if cap_ms is not None and cap_ms < reset_ms:
        s.fail("max_reset_timeout_ms", f"must be at least reset_timeout_ms ({reset_ms} ms), "
                                       f"got {cap_ms}; raise it or lower reset_timeout_ms")
    return BreakerConfig(
        enabled=s.flag("enabled", settings.enable_circuit_breaker),
        threshold=s.count("threshold", settings.circuit_breaker_threshold),
        reset_timeout_ms=reset_ms,
        call_timeout_ms=s.millis("call_timeout_ms", settings.circuit_breaker_timeout_ms),
        half_open_max_calls=s.count("half_open_max_calls", 1),
        failure_rate=None if rate is None else s.number("failure_rate", 0.5, 0.01, 1.0),
        window_ms=s.millis("window_ms", 60000),
        minimum_calls=s.count("minimum_calls", 10),
        reset_backoff_factor=s.number("reset_backoff_factor", DEFAULT_RESET_BACKOFF_FACTOR,
                                      1.0, 100.0),
        max_reset_timeout_ms=cap_ms,
    )


def _fallback(s: Section, position: int, settings: Settings,
              environ: Mapping[str, str]) -> FallbackConfig:
    kind = s.choice("type", FALLBACK_TYPES)
    known = ("type", "priority", *_FALLBACK_EXTRA_KEYS[kind])
    s.reject_unknown(known, f"a fallback of type {kind!r}")
    api, cache = kind == "api", kind == "cache"
    return FallbackConfig(
        type=kind,
        priority=s.count("priority", position),
        base_url=_base_url(s, "base_url") if api else None,
        ttl_ms=s.millis("ttl_ms", DEFAULT_CACHE_TTL_MS),
        value=s.get("value"),
        message=s.optional_text("message"),
        headers=_headers(s, environ) if api else MappingProxyType({}),
        oauth=_oauth(s.section("oauth", _OAUTH_KEYS), environ) if api else None,
        methods=_cache_methods(s) if cache else DEFAULT_CACHE_METHODS,
        vary=_vary(s) if cache else (),
        max_body_bytes=s.whole("max_body_bytes", settings.cache_max_body_bytes, 0, MAX_BYTES,
                               "bytes"),
    )


def _names(s: Section, key: str) -> list[str]:
    value = s.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        s.fail(key, f"must be a list of names, got {show_value(value)}")
    return list(value)


def _cache_methods(s: Section) -> tuple[str, ...]:
    """The methods whose answers the cache keeps: GET and HEAD unless the entry opts in."""
    if s.get("methods") is None:
        return DEFAULT_CACHE_METHODS
    methods = [name.upper() for name in _names(s, "methods")]
    for method in methods:
        if method not in _HTTP_METHODS:
            s.fail("methods", f"names {method!r}, which is not an HTTP method; use some of "
                              f"{', '.join(_HTTP_METHODS)}")
    if not methods:
        s.fail("methods", "must name at least one method, e.g. [GET, HEAD]; remove the cache "
                          "fallback to cache nothing")
    return tuple(dict.fromkeys(methods))


def _vary(s: Section) -> tuple[str, ...]:
    """Job header names whose values tell cached answers apart (compared case-insensitively)."""
    names = _names(s, "vary")
    for name in names:
        if not _HEADER_NAME.fullmatch(name):
            s.fail("vary", f"names {show_value(name)}, which is not a valid HTTP header name")
    return tuple(dict.fromkeys(name.lower() for name in names))


def _fallbacks(s: Section, settings: Settings,
               environ: Mapping[str, str]) -> tuple[FallbackConfig, ...]:
    entries = [_fallback(item, number, settings, environ)
               for number, item in enumerate(s.sections("fallbacks"), 1)]
    return tuple(sorted(entries, key=lambda f: f.priority))


def _health(s: Section | None, settings: Settings) -> HealthCheckConfig | None:
    if s is None:
        return None
    endpoint = s.text("endpoint", "/health")
    if not endpoint.startswith("/"):
        s.fail("endpoint", f"must be a path starting with '/', got {show_value(endpoint)}")
    if "?" in endpoint or "#" in endpoint:
        s.fail("endpoint", f"must be a path without a query string or fragment, got "
                           f"{show_value(endpoint)}; the health check sends a plain GET")
    try:
        validate_path(endpoint)
    except UnsafePathError as exc:
        s.fail("endpoint", f"must stay below the base URL: {_lower_first(str(exc)).rstrip('.')}")
    return HealthCheckConfig(
        endpoint=endpoint,
        interval_ms=s.millis("interval_ms", settings.health_check_interval_ms),
        timeout_ms=s.millis("timeout_ms", settings.health_check_timeout_ms),
        failure_threshold=s.count("failure_threshold", 3),
    )


def _resolve(s: Section, key: str, template: str, environ: Mapping[str, str]) -> str:
    """Replace every ${NAME} in `template` with the variable's value from `environ`."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if not _ENV_NAME.fullmatch(name):
            s.fail(key, f"refers to ${{{name}}}, which is not a valid environment variable name")
        if name not in environ:
            s.fail(key, f"refers to ${{{name}}}, which is not set in the environment; "
                        "set it before starting or remove the reference")
        return environ[name]

    return _ENV_REF.sub(lookup, template)


def _base_url(s: Section, key: str) -> str:
    """An http(s) URL without user information, query or fragment: the root of every call.
    Messages hide the user information and query, which may hold secrets."""
    url = s.required_text(key).strip()
    if not is_http_url(url):
        s.fail(key, "must be an http:// or https:// URL with a host, e.g. "
                    f"https://api.example.com, got {shown_base_url(url)}")
    problem = base_url_problem(url)
    if problem:
        what, hint = problem
        s.fail(key, f"{what}, got {shown_base_url(url)}; {hint}")
    return url


def _headers(s: Section, environ: Mapping[str, str]) -> Mapping[str, str]:
    """The static headers with ${NAME} resolved, held to the rules of a job's headers, so a
    header that cannot be sent is refused now rather than at every call. Messages never show a
    value: a resolved ${NAME} is usually a secret."""
    headers: dict[str, str] = {}
    for name, template in s.string_map("headers").items():
        key = f"headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            s.fail(key, "is not a valid HTTP header name")
        _check_header(s, key, name)
        value = _resolve(s, key, template, environ)
        _check_header_value(s, key, value)
        headers[name] = value
    try:
        validate_headers(headers)
    except UnsafeHeaderError as exc:
        s.fail("headers", f"is refused: {_lower_first(str(exc)).rstrip('.')}")
    return MappingProxyType(headers)


def _check_header(s: Section, key: str, name: str) -> None:
    try:
        validate_headers({name: ""})
    except UnsafeHeaderError as exc:
        s.fail(key, f"is refused: {_lower_first(str(exc)).rstrip('.')}")


def _check_header_value(s: Section, key: str, value: str) -> None:
    if any((ord(ch) < 32 and ch != "\t") or ord(ch) == 127 for ch in value):
        s.fail(key, "has a value containing a line break or control character, which would "
                    "let it inject other headers")
    if not is_header_value_text(value):
        s.fail(key, "has a value with characters outside visible ASCII (not shown: it may be "
                    "a secret); header values may hold only visible ASCII, spaces and tabs")
    if len(value) > MAX_HEADER_BYTES:
        s.fail(key, f"has a value of {len(value)} characters; the limit is "
                    f"{MAX_HEADER_BYTES} bytes (8 KiB)")


def _lower_first(sentence: str) -> str:
    return sentence[:1].lower() + sentence[1:]


def _oauth(s: Section | None, environ: Mapping[str, str]) -> OAuthConfig | None:
    if s is None:
        return None
    secret_env = s.required_text("client_secret_env")
    if not _ENV_NAME.fullmatch(secret_env):
        s.fail("client_secret_env", f"must be an environment variable name such as "
                                    f"PAYMENTS_CLIENT_SECRET, got {show_value(secret_env)}")
    if secret_env not in environ:
        s.fail("client_secret_env", f"names {secret_env}, which is not set in the environment; "
                                    "set it before starting")
    return OAuthConfig(
        token_url=s.url("token_url"),
        client_id=s.required_text("client_id"),
        client_secret_env=secret_env,
        scope=s.optional_text("scope"),
    )


def _retry_budget(s: Section) -> RetryBudgetConfig:
    default = DEFAULT_RETRY_BUDGET
    return RetryBudgetConfig(
        enabled=s.flag("enabled", default.enabled),
        ratio=s.number("ratio", default.ratio, 0.0, MAX_RATIO),
        floor=s.whole("floor", default.floor, 0, 1_000_000),
        window_ms=s.whole("window_ms", default.window_ms, MIN_WINDOW_MS, MAX_WINDOW_MS, "ms"),
    )


def _matching_names(s: Section, key: str, pattern: re.Pattern[str], example: str) -> list[str]:
    """A list of names under `key`, each matching `pattern` (empty when absent)."""
    value = s.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        s.fail(key, f"must be a list of names such as [{example}], got {show_value(value)}")
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            s.fail(key, f"must list names such as {example}, got {show_value(item)}")
    return value


def _audit(s: Section | None) -> AuditPolicy:
    """What displays may show of this integration's requests (nothing but names by default)."""
    if s is None:
        return HIDE_ALL
    params = _matching_names(s, "show_params", re.compile(r"\S+"), "page")
    headers = _matching_names(s, "show_headers", _HEADER_NAME, "X-Request-Id")
    fields = _matching_names(s, "show_body_fields", _BODY_PATH, "order.amount")
    try:
        return AuditPolicy.of(params, headers, fields)
    except ValueError as exc:
        s.fail("show_headers", str(exc))


def _check_countdowns(integration: Integration, s: Section, settings: Settings) -> None:
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
            s.fail(key, f"is {millis} ms{note}, which is not below REDIS_VISIBILITY_TIMEOUT "
                        f"({limit_s} s): Redis would redeliver a job waiting that long and it "
                        f"would run twice. Lower {key} or raise REDIS_VISIBILITY_TIMEOUT to at "
                        f"least {millis // 1000 + 1} seconds")


def _integration(
    ident: str, s: Section, settings: Settings, environ: Mapping[str, str]
) -> Integration:
    s.reject_unknown(_INTEGRATION_KEYS)
    rate = s.section("rate_limit", _RATE_KEYS) or s.empty("rate_limit")
    integration = Integration(
        id=ident,
        name=s.text("name", ident),
        base_url=_base_url(s, "base_url"),
        timeout_ms=s.millis("timeout_ms", settings.api_timeout_ms),
        retry=_retry(s.section("retry", _RETRY_KEYS) or s.empty("retry"), settings),
        circuit_breaker=_breaker(
            s.section("circuit_breaker", _BREAKER_KEYS) or s.empty("circuit_breaker"), settings
        ),
        fallbacks=_fallbacks(s, settings, environ),
        health_check=_health(s.section("health_check", _HEALTH_KEYS), settings),
        rate_limit=RateLimitConfig(
            window_ms=rate.millis("window_ms", settings.rate_limit_window_ms),
            max_requests=rate.count("max_requests", settings.rate_limit_max_requests),
        ),
        headers=_headers(s, environ),
        oauth=_oauth(s.section("oauth", _OAUTH_KEYS), environ),
        retry_budget=_retry_budget(
            s.section("retry_budget", _BUDGET_KEYS) or s.empty("retry_budget")),
        audit=_audit(s.section("audit", _AUDIT_KEYS)),
        max_response_bytes=s.whole("max_response_bytes", settings.max_response_bytes, 1,
                                   MAX_BYTES, "bytes"),
        deadline_ms=None if s.get("deadline_ms") is None else s.millis("deadline_ms", 1),
    )
    _check_countdowns(integration, s, settings)
    strategies = parse_strategies(s, tuple(f.type for f in integration.fallbacks),
                                  FALLBACK_TYPES, settings.visibility_timeout_s)
    return replace(integration, strategies=MappingProxyType(strategies))


def _integration_id(entry: Any, path: str, number: int) -> str:
    where = f"{path}: integration #{number}"
    if not isinstance(entry, Mapping):
        raise RegistryError(f"{where} must be a mapping with keys such as id and base_url, "
                            f"got {show_value(entry)}.")
    ident = entry.get("id")
    if ident is None:
        raise RegistryError(f"{where}: key 'id' is missing; give every integration an id "
                            "such as 'payments'.")
    if not isinstance(ident, str) or not _ID.fullmatch(ident):
        raise RegistryError(f"{where}: key 'id' must be 1 to 63 lowercase letters, digits, '-' "
                            f"or '_', starting with a letter or digit, got {show_value(ident)}.")
    return ident


def load_file(path: str, settings: Settings, environ: Mapping[str, str]) -> Registry:
    """Load and validate the integrations file at `path`."""
    document = read_yaml(path, RegistryError, _MISSING_HINT)
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
    seen: dict[str, int] = {}
    integrations = []
    for number, entry in enumerate(entries, 1):
        ident = _integration_id(entry, path, number)
        if ident in seen:
            raise RegistryError(f"{path}: integration {ident!r} is defined twice (#{seen[ident]} "
                                f"and #{number}); give each integration its own id.")
        seen[ident] = number
        section = Section(entry, path, f"integration {ident!r}", RegistryError)
        integrations.append(_integration(ident, section, settings, environ))
    return Registry(integrations, source=path)


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
