"""The integrations file (RECOVERY_INTEGRATIONS) as a user writes it: pydantic models.

Every key's type, range and choice is checked here, and the JSON Schema for editors
(`recovery-cli config schema`) comes from these models and their field docs. A key left out is
None; `recovery.config.loader` applies the defaults (most from the environment's Settings),
runs the checks that need other keys or the environment, and builds the `Integration`s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from recovery.config.budget import DEFAULT_RETRY_BUDGET, MAX_RATIO, MAX_WINDOW_MS, MIN_WINDOW_MS
from recovery.config.file_types import (
    Bool,
    Count,
    Each,
    FileModel,
    FractionOrFlag,
    Millis,
    MillisOrZero,
    Names,
    NonEmptyList,
    NonEmptyText,
    Number,
    Pattern,
    Rule,
    StringMap,
    Tag,
    Text,
    Whole,
    default,
    refuse,
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
)
from recovery.config.settings import MAX_BYTES, base_url_problem, is_http_url, shown_base_url
from recovery.config.strategies import FALLBACK_TYPES, StrategyModel, StrategyTable
from recovery.config.urlguard import UnsafePathError, validate_path
from recovery.config.workflow_models import WorkflowModel
from recovery.config.yamlconfig import show_value

ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
_BODY_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")


@dataclass(frozen=True)
class HttpUrl(Rule):
    """An http(s) URL with a host. A base URL also may not carry user information, a query or
    a fragment; messages hide the user information and query, which may hold secrets."""

    base: bool

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            refuse(f"must be a non-empty string, got {show_value(value)}")
        url = value.strip()
        shown = shown_base_url(url) if self.base else show_value(url)
        if not is_http_url(url):
            refuse("must be an http:// or https:// URL with a host, e.g. "
                   f"https://api.example.com, got {shown}")
        problem = base_url_problem(url) if self.base else None
        if problem:
            refuse(f"{problem[0]}, got {shown}; {problem[1]}")
        return url

    def schema(self) -> dict[str, Any]:
        return {"format": "uri", "pattern": "^https?://"}


class Endpoint(Rule):
    """The health check's path below the base URL."""

    def check(self, value: Any) -> str:
        endpoint = Text().check(value)
        if not endpoint.startswith("/"):
            refuse(f"must be a path starting with '/', got {show_value(endpoint)}")
        if "?" in endpoint or "#" in endpoint:
            refuse(f"must be a path without a query string or fragment, got "
                   f"{show_value(endpoint)}; the health check sends a plain GET")
        try:
            validate_path(endpoint)
        except UnsafePathError as exc:
            reason = str(exc)
            refuse(f"must stay below the base URL: {reason[:1].lower()}{reason[1:].rstrip('.')}")
        return endpoint

    def schema(self) -> dict[str, Any]:
        return {"pattern": "^/[^?#]*$"}


class Methods(Rule):
    """The HTTP methods a cache keeps answers of, upper-cased, each once."""

    def check(self, value: Any) -> list[str]:
        methods = [name.upper() for name in Names("a list of names").check(value)]
        for method in methods:
            if method not in HTTP_METHODS:
                refuse(f"names {method!r}, which is not an HTTP method; use some of "
                       f"{', '.join(HTTP_METHODS)}")
        if not methods:
            refuse("must name at least one method, e.g. [GET, HEAD]; remove the cache "
                   "fallback to cache nothing")
        return list(dict.fromkeys(methods))

    def schema(self) -> dict[str, Any]:
        return {"minItems": 1}


class HeaderNames(Rule):
    """Job header names, lower-cased, each once."""

    def check(self, value: Any) -> list[str]:
        names = Names("a list of names").check(value)
        for name in names:
            if not HEADER_NAME.fullmatch(name):
                refuse(f"names {show_value(name)}, which is not a valid HTTP header name")
        return list(dict.fromkeys(name.lower() for name in names))


BaseUrl = Annotated[str, HttpUrl(base=True)]
Headers = Annotated[dict[str, str], StringMap()]
EnvName = Annotated[str, Pattern(ENV_NAME, "must be an environment variable name such as "
                                           "PAYMENTS_CLIENT_SECRET")]
Bytes = Annotated[int, Whole(0, MAX_BYTES, "bytes")]


class RetryModel(FileModel):
    """How a failed call is retried: delays grow from initial_delay_ms by backoff_factor up to
    max_delay_ms, each shortened by up to `jitter` of itself."""

    max_attempts: Count | None = None
    """Attempts in all, the first one included (default: MAX_RETRIES)."""
    initial_delay_ms: MillisOrZero | None = None
    """Delay before the first retry (default: RETRY_DELAY)."""
    backoff_factor: Annotated[float, Number(1.0, 100.0)] | None = None
    """Each delay is the previous one times this (default: RETRY_BACKOFF_FACTOR)."""
    max_delay_ms: Millis | None = None
    """The longest delay (default: RETRY_MAX_DELAY)."""
    jitter: Annotated[float, FractionOrFlag(DEFAULT_JITTER)] | None = default(DEFAULT_JITTER)
    """Fraction 0..1 of each delay that is randomised; true means 0.2, false none."""


class BreakerModel(FileModel):
    """The circuit breaker shared by every worker: opens after `threshold` failures in a row
    (or at `failure_rate` over `window_ms`), lets probes through after reset_timeout_ms."""

    enabled: Bool | None = None
    """Whether the breaker is used (default: ENABLE_CIRCUIT_BREAKER)."""
    threshold: Count | None = None
    """Failures in a row that open it (default: CIRCUIT_BREAKER_THRESHOLD)."""
    reset_timeout_ms: Millis | None = None
    """How long it stays open before a probe (default: CIRCUIT_BREAKER_RESET_TIMEOUT)."""
    call_timeout_ms: Millis | None = None
    """A call slower than this counts as a failure (default: CIRCUIT_BREAKER_TIMEOUT)."""
    half_open_max_calls: Count | None = default(DEFAULT_HALF_OPEN_CALLS)
    """Probe calls let through while half open."""
    failure_rate: Annotated[float, Number(0.01, 1.0)] | None = None
    """Open when this share of the calls in window_ms failed (unset: count failures in a row)."""
    window_ms: Millis | None = default(DEFAULT_RATE_WINDOW_MS)
    """The window the failure rate is measured over."""
    minimum_calls: Count | None = default(DEFAULT_MINIMUM_CALLS)
    """Calls in the window before the failure rate counts."""
    reset_backoff_factor: Annotated[float, Number(1.0, 100.0)] | None = default(
        DEFAULT_RESET_BACKOFF_FACTOR)
    """After each failed probe the open time is multiplied by this."""
    max_reset_timeout_ms: Millis | None = None
    """The longest open time after failed probes (default: 4 x reset_timeout_ms); at least
    reset_timeout_ms."""


class OAuthModel(FileModel):
    """OAuth client credentials; the token is fetched and refreshed by the worker."""

    token_url: Annotated[str, HttpUrl(base=False)]
    """The token endpoint."""
    client_id: NonEmptyText
    client_secret_env: EnvName
    """The environment variable holding the client secret (read at call time, never stored)."""
    scope: NonEmptyText | None = None


class _Fallback(FileModel):
    priority: Count | None = None
    """Fallbacks are tried by priority, 1 first (default: the position in the list)."""


class ApiFallback(_Fallback):
    """Another origin serving the same API (its own credentials; the primary's are never
    sent to it)."""

    unknown_key_note: ClassVar[str] = " for a fallback of type 'api'"
    type: Literal["api"]
    base_url: BaseUrl
    headers: Headers | None = None
    """Static headers for the fallback origin; ${NAME} is replaced from the environment."""
    oauth: OAuthModel | None = None


class CacheFallback(_Fallback):
    """The last good answer to the same request, kept in Redis."""

    unknown_key_note: ClassVar[str] = " for a fallback of type 'cache'"
    type: Literal["cache"]
    ttl_ms: Millis | None = default(DEFAULT_CACHE_TTL_MS)
    """How long an answer is kept."""
    methods: Annotated[list[str], Methods()] | None = default(list(DEFAULT_CACHE_METHODS))
    """Methods whose answers are kept (only safe reads unless listed)."""
    vary: Annotated[list[str], HeaderNames()] | None = None
    """Job headers whose values tell cached answers apart."""
    max_body_bytes: Bytes | None = None
    """Larger answers are not kept (default: CACHE_MAX_BODY_BYTES)."""


class DefaultFallback(_Fallback):
    """A fixed answer."""

    unknown_key_note: ClassVar[str] = " for a fallback of type 'default'"
    type: Literal["default"]
    value: Any = None
    """The answer's body (any YAML value)."""


class DegradedFallback(_Fallback):
    """An answer that says the service is degraded."""

    unknown_key_note: ClassVar[str] = " for a fallback of type 'degraded'"
    type: Literal["degraded"]
    message: NonEmptyText | None = None


Fallback = Annotated[ApiFallback | CacheFallback | DefaultFallback | DegradedFallback,
                     Field(discriminator="type"), Tag(FALLBACK_TYPES)]


class HealthCheckModel(FileModel):
    """A scheduled GET of the endpoint; a healthy answer can close an open breaker."""

    endpoint: Annotated[str, Endpoint()] | None = default(DEFAULT_HEALTH_ENDPOINT)
    interval_ms: Millis | None = None
    """Time between checks (default: HEALTH_CHECK_INTERVAL)."""
    timeout_ms: Millis | None = None
    """Default: HEALTH_CHECK_TIMEOUT."""
    failure_threshold: Count | None = default(DEFAULT_HEALTH_FAILURES)
    """Failed checks in a row before the integration counts as unhealthy."""


class RateLimitModel(FileModel):
    """Calls allowed per window, cluster-wide; a job over the limit waits without spending an
    attempt."""

    window_ms: Millis | None = None
    """Default: RATE_LIMIT_WINDOW."""
    max_requests: Count | None = None
    """Default: RATE_LIMIT_MAX_REQUESTS."""


class RetryBudgetModel(FileModel):
    """Retries allowed per window: floor + ratio x first attempts, cluster-wide."""

    enabled: Bool | None = default(DEFAULT_RETRY_BUDGET.enabled)
    ratio: Annotated[float, Number(0.0, MAX_RATIO)] | None = default(DEFAULT_RETRY_BUDGET.ratio)
    floor: Annotated[int, Whole(0, 1_000_000)] | None = default(DEFAULT_RETRY_BUDGET.floor)
    window_ms: Annotated[int, Whole(MIN_WINDOW_MS, MAX_WINDOW_MS, "ms")] | None = default(
        DEFAULT_RETRY_BUDGET.window_ms)


class AuditModel(FileModel):
    """Request values displays may show (by default names only, no values, no body)."""

    show_params: Annotated[list[str], Each(re.compile(r"\S+"), "page")] | None = None
    show_headers: Annotated[list[str], Each(HEADER_NAME, "X-Request-Id")] | None = None
    """Never Authorization, Cookie or Set-Cookie."""
    show_body_fields: Annotated[list[str], Each(_BODY_PATH, "order.amount")] | None = None
    """Dotted paths into a JSON body, e.g. order.amount."""


class IntegrationModel(FileModel):
    """One third-party API and how its calls are kept alive."""

    id: Annotated[str, Pattern(ID, "must be 1 to 63 lowercase letters, digits, '-' or '_', "
                                   "starting with a letter or digit")]
    """What jobs name the integration by, e.g. payments."""
    name: NonEmptyText | None = None
    """A display name (default: the id)."""
    base_url: BaseUrl
    """The root of every call, e.g. https://api.example.com/v1."""
    timeout_ms: Millis | None = None
    """Per-call timeout (default: API_TIMEOUT)."""
    retry: RetryModel | None = None
    circuit_breaker: BreakerModel | None = None
    fallbacks: list[Fallback] | None = None
    """What may answer when the API cannot: api, cache, default or degraded."""
    health_check: HealthCheckModel | None = None
    rate_limit: RateLimitModel | None = None
    headers: Headers | None = None
    """Static headers; ${NAME} is replaced from the environment at start."""
    oauth: OAuthModel | None = None
    retry_budget: RetryBudgetModel | None = None
    audit: AuditModel | None = None
    max_response_bytes: Annotated[int, Whole(1, MAX_BYTES, "bytes")] | None = None
    """Larger answers are refused (default: MAX_RESPONSE_BYTES)."""
    deadline_ms: Millis | None = None
    """The whole call, connect and every read (default: the call timeout only)."""
    strategies: Annotated[dict[str, StrategyModel], StrategyTable()] | None = None
    """Recovery strategies by error category or HTTP status (400-599)."""


class IntegrationsSection(FileModel):
    """The integrations of the file (its `workflows` are read by the workflow loader)."""

    integrations: Annotated[list[IntegrationModel], NonEmptyList("integrations")]


class IntegrationsFile(IntegrationsSection):
    """The integrations file named by RECOVERY_INTEGRATIONS."""

    model_config = FileModel.model_config | {"title": "api-recovery integrations file"}
    workflows: list[WorkflowModel] | None = None
    """Workflows: named graphs of steps (also possible in the RECOVERY_WORKFLOWS file)."""


def integrations_file_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the integrations file, for editors and checks."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **IntegrationsFile.model_json_schema()}
