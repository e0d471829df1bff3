"""The integrations the system can call, each with its own retry, breaker and fallback policy.

They come from the YAML file named by RECOVERY_INTEGRATIONS (see examples/integrations.yaml) or,
without one, from the single `primary-api` integration built from the environment the way the
original design did (the file is read by `recovery.config.loader`). Everything is validated
at start; a `RegistryError` names the file, the integration and the key that is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from recovery.config.audit_policy import HIDE_ALL, AuditPolicy
from recovery.config.budget import (
    DEFAULT_RETRY_BUDGET,
    RetryBudgetConfig,
)
from recovery.config.settings import Settings
from recovery.config.strategies import StrategyBlock

PRIMARY_ID = "primary-api"
DEFAULT_JITTER = 0.2
DEFAULT_CACHE_TTL_MS = 3_600_000
DEFAULT_RESET_BACKOFF_FACTOR = 2.0
DEFAULT_HALF_OPEN_CALLS = 1
#: The failure-rate breaker's window and the calls it needs before the rate counts.
DEFAULT_RATE_WINDOW_MS = 60_000
DEFAULT_MINIMUM_CALLS = 10
DEFAULT_HEALTH_ENDPOINT = "/health"
DEFAULT_HEALTH_FAILURES = 3
#: Without `max_reset_timeout_ms`, the open time grows to at most this many reset timeouts.
DEFAULT_RESET_CAP_MULTIPLE = 4
#: What the cache fallback keeps unless it lists `methods`: only safe, repeatable reads.
DEFAULT_CACHE_METHODS = ("GET", "HEAD")
DEFAULT_CACHE_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024

class RegistryError(ValueError):
    """The integrations file is missing, malformed or describes an invalid integration."""


class UnknownIntegrationError(KeyError):
    """A job named an integration the registry does not know."""

    def __init__(self, integration_id: str, known: Iterable[str]) -> None:
        self.integration_id = integration_id
        self.known = sorted(known)
        super().__init__(integration_id)

    def __str__(self) -> str:
        return (
            f"Unknown integration {self.integration_id!r}. "
            f"Known integrations: {', '.join(self.known)}."
        )


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int  # total attempts, the first one included
    initial_delay_ms: int
    backoff_factor: float
    max_delay_ms: int
    jitter: float  # fraction 0..1 of the delay that is randomised


@dataclass(frozen=True)
class BreakerConfig:
    enabled: bool
    threshold: int
    reset_timeout_ms: int
    call_timeout_ms: int
    half_open_max_calls: int = DEFAULT_HALF_OPEN_CALLS
    failure_rate: float | None = None
    window_ms: int = DEFAULT_RATE_WINDOW_MS
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    # After each failed probe in a row the open time is multiplied by this factor, up to the cap:
    # open_ms = min(reset_timeout_ms * reset_backoff_factor ** failed_probes, cap).
    reset_backoff_factor: float = DEFAULT_RESET_BACKOFF_FACTOR
    max_reset_timeout_ms: int | None = None  # None: DEFAULT_RESET_CAP_MULTIPLE x reset_timeout_ms

    @property
    def reset_cap_ms(self) -> int:
        """The longest the breaker stays open after failed probes (`max_reset_timeout_ms`)."""
        if self.max_reset_timeout_ms is not None:
            return self.max_reset_timeout_ms
        return DEFAULT_RESET_CAP_MULTIPLE * self.reset_timeout_ms


@dataclass(frozen=True)
class OAuthConfig:
    token_url: str
    client_id: str
    client_secret_env: str  # name of the variable holding the secret, read at call time
    scope: str | None = None


@dataclass(frozen=True)
class FallbackConfig:
    type: str  # api | cache | default | degraded
    priority: int
    base_url: str | None = None
    ttl_ms: int = DEFAULT_CACHE_TTL_MS
    value: Any = None
    message: str | None = None
    # api: the fallback origin's own credentials; the primary's are never sent to it.
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    oauth: OAuthConfig | None = None
    # cache: which requests are kept and told apart, and how large an answer may be kept.
    methods: tuple[str, ...] = DEFAULT_CACHE_METHODS
    vary: tuple[str, ...] = ()  # job header names (lower case) that enter the cache key
    max_body_bytes: int = DEFAULT_CACHE_MAX_BODY_BYTES


@dataclass(frozen=True)
class HealthCheckConfig:
    endpoint: str
    interval_ms: int
    timeout_ms: int
    failure_threshold: int = DEFAULT_HEALTH_FAILURES


@dataclass(frozen=True)
class RateLimitConfig:
    window_ms: int
    max_requests: int


@dataclass(frozen=True)
class Integration:
    id: str
    name: str
    base_url: str
    timeout_ms: int
    retry: RetryConfig
    circuit_breaker: BreakerConfig
    fallbacks: tuple[FallbackConfig, ...]  # sorted by priority, 1 first
    health_check: HealthCheckConfig | None
    rate_limit: RateLimitConfig
    headers: Mapping[str, str]  # ${NAME} references already resolved
    oauth: OAuthConfig | None
    retry_budget: RetryBudgetConfig = DEFAULT_RETRY_BUDGET
    audit: AuditPolicy = HIDE_ALL  # what displays may show of its jobs' requests
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # larger answers are refused
    deadline_ms: int | None = None  # whole call (connect + every read); None: the call timeout
    #: Recovery strategies by error category or status ("rate_limit", "503"), over the
    #: default table (`recovery.core.strategies`).
    strategies: Mapping[str, StrategyBlock] = field(
        default_factory=lambda: MappingProxyType({}))


class Registry:
    """The integrations by id, in the order they were defined."""

    def __init__(self, integrations: Iterable[Integration], source: str = "environment") -> None:
        self.source = source
        self._by_id: dict[str, Integration] = {}
        for integration in integrations:
            if integration.id in self._by_id:
                raise RegistryError(f"{source}: integration {integration.id!r} is defined twice.")
            self._by_id[integration.id] = integration

    def get(self, integration_id: str) -> Integration:
        try:
            return self._by_id[integration_id]
        except KeyError:
            raise UnknownIntegrationError(integration_id, self._by_id) from None

    def __iter__(self) -> Iterator[Integration]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, integration_id: object) -> bool:
        return integration_id in self._by_id

    def ids(self) -> list[str]:
        return list(self._by_id)


def primary_integration(settings: Settings) -> Integration:
    """The `primary-api` integration built from the environment, as the original design had it."""
    fallbacks = [FallbackConfig(type="cache", priority=2,
                                max_body_bytes=settings.cache_max_body_bytes),
                 FallbackConfig("degraded", 4)]
    if settings.secondary_api_url:
        fallbacks.append(FallbackConfig("api", 1, base_url=settings.secondary_api_url))
    if settings.fallback_api_url:
        fallbacks.append(FallbackConfig("api", 3, base_url=settings.fallback_api_url))
    return Integration(
        id=PRIMARY_ID,
        name=PRIMARY_ID,
        base_url=settings.primary_api_url,
        timeout_ms=settings.api_timeout_ms,
        retry=RetryConfig(
            max_attempts=settings.max_retries,
            initial_delay_ms=settings.retry_delay_ms,
            backoff_factor=settings.retry_backoff_factor,
            max_delay_ms=settings.retry_max_delay_ms,
            jitter=DEFAULT_JITTER,
        ),
        circuit_breaker=BreakerConfig(
            enabled=settings.enable_circuit_breaker,
            threshold=settings.circuit_breaker_threshold,
            reset_timeout_ms=settings.circuit_breaker_reset_timeout_ms,
            call_timeout_ms=settings.circuit_breaker_timeout_ms,
        ),
        fallbacks=tuple(sorted(fallbacks, key=lambda f: f.priority)),
        health_check=HealthCheckConfig(
            endpoint=DEFAULT_HEALTH_ENDPOINT,
            interval_ms=settings.health_check_interval_ms,
            timeout_ms=settings.health_check_timeout_ms,
        ),
        rate_limit=RateLimitConfig(
            window_ms=settings.rate_limit_window_ms,
            max_requests=settings.rate_limit_max_requests,
        ),
        headers=MappingProxyType({}),
        oauth=None,
        max_response_bytes=settings.max_response_bytes,
    )
