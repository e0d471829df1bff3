"""Every setting of the system, read from the environment and validated once at start.

A bad value stops the process with a `SettingsError` that names the variable, shows the value it
got and says what is accepted, so an operator can fix the deployment without reading code.

`Settings` is a pydantic-settings model: each field is read from the environment variable named
by its alias (case-sensitive, no prefix) and checked by its kind (`setting_types`); checks that
span several variables are the model validators below. `load_settings` is the one reader: the
model itself reads no .env file, secrets directory or environment of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from recovery.config import redis_urls
from recovery.config.setting_types import (
    CONSOLE_ROLES,
    MAX_BACKOFF_FACTOR,
    MAX_COUNT,
    MAX_MS,
    SERVE_TOKEN_LENGTH,
    Choice,
    ConsolePairs,
    ConsoleUsers,
    Count,
    Factor,
    FernetKeys,
    Flag,
    KeyPrefix,
    Millis,
    OptionalText,
    SecretKey,
    Text,
    Token,
    Whole,
    refusal,
)
from recovery.config.setting_urls import (
    AMQP_SCHEMES,
    BaseUrl,
    BrokerUrl,
    DatabaseUrl,
    HttpUrl,
    RedisUrl,
    WebhookUrl,
    url_scheme,
)
from recovery.config.values import base_url_problem, is_http_url, show, shown_base_url

__all__ = [
    "CONSOLE_ROLES", "CONSOLE_SECRET_MIN", "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_WORKER_CONCURRENCY", "LOG_LEVELS", "MAX_BACKOFF_FACTOR", "MAX_BYTES", "MAX_COUNT",
    "MAX_MS", "MAX_REQUEST_BYTES_RANGE", "MAX_SPOOL_ENTRIES", "MAX_WORKER_CONCURRENCY",
    "MIN_IDEMPOTENCY_TTL_MS", "RESULT_MAX_BYTES_RANGE", "SERVE_TOKEN_LENGTH", "WORKER_POOLS",
    "Settings", "SettingsError", "base_url_problem", "get_settings", "is_http_url",
    "load_settings", "reset_settings", "settings_json_schema", "show", "shown_base_url",
]

#: Largest byte size (response and cache limits) we accept: 1 GiB.
MAX_BYTES = 1024 ** 3
#: Shortest idempotency TTL: a key must outlive its job's retries (one minute at least).
MIN_IDEMPOTENCY_TTL_MS = 60_000
#: Largest audit spool cap: 100 million entries is far beyond any Redis's memory.
MAX_SPOOL_ENTRIES = 100_000_000
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Default cap on one request at enqueue: body, query parameters and headers together.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
#: Bounds of MAX_REQUEST_BYTES: every message is kept in Redis, the DLQ and the audit spool.
MAX_REQUEST_BYTES_RANGE = (1024, 16 * 1024 * 1024)
#: Shortest CONSOLE_SECRET_KEY: it signs the session cookie.
CONSOLE_SECRET_MIN = 32
#: RESULT_MAX_BYTES bounds: an outcome lives in Redis for RESULT_TTL, so it stays small.
RESULT_MAX_BYTES_RANGE = (0, 64 * 1024 * 1024)
#: Worker pools a deployment may choose (WORKER_POOL). gevent and eventlet are left out:
#: psycopg 3 waits for PostgreSQL inside libpq, where their hub cannot switch away.
WORKER_POOLS = ("threads", "prefork", "solo")
#: Threads a worker runs jobs on by default: API calls mostly wait, so many per core.
DEFAULT_WORKER_CONCURRENCY = 64
#: Most threads one worker process may run; past this a process spends more on switching
#: between threads (and holding sockets) than it gains, so run more processes instead.
MAX_WORKER_CONCURRENCY = 1024


class SettingsError(ValueError):
    """A setting in the environment is missing, malformed or out of range."""


def setting(variable: str, default: Any, description: str, *, secret: bool = False,
            url_with_password: bool = False) -> Any:
    """A field read from `variable`. A secret is left out of repr and marked writeOnly in the
    JSON Schema; a URL that may carry a password is left out of repr too. A default of None or
    () means unset and is not shown in the schema."""
    def edit(schema: dict[str, Any]) -> None:
        if default is None or default == ():
            schema.pop("default", None)
        if secret:
            schema["writeOnly"] = True
    return Field(default, alias=variable, title=variable, description=description,
                 repr=not (secret or url_with_password), json_schema_extra=edit)


def derived(variable: str, factory: Callable[[dict[str, Any]], Any], description: str) -> Any:
    """A field whose default is computed from the fields validated before it."""
    return Field(default_factory=factory, alias=variable, title=variable,
                 description=description)


def _default_concurrency(validated: dict[str, Any]) -> int:
    """64 threads; a process pool defaults to one process per core (64 processes would be 64
    copies of the worker)."""
    if validated["worker_pool"] == "threads":
        return DEFAULT_WORKER_CONCURRENCY
    return os.cpu_count() or 1


_QUEUE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")


class Settings(BaseSettings):
    """The validated configuration. Durations are milliseconds unless the name says otherwise."""

    model_config = SettingsConfigDict(frozen=True, validate_by_name=True,
                                      hide_input_in_errors=True, title="api-recovery settings")

    log_level: Annotated[str, Choice(LOG_LEVELS)] = setting(
        "LOG_LEVEL", "info", "Log level.")
    service_name: Annotated[str, Text("api-recovery")] = setting(
        "SERVICE_NAME", "api-recovery", "Celery app name and log field.")
    database_url: Annotated[str, DatabaseUrl()] = setting(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres",
        "The audit trail's database: postgresql:// (psycopg 3) or sqlite:///file for demos.",
        url_with_password=True)
    redis_url: Annotated[str, RedisUrl()] = setting(
        "REDIS_URL", "redis://127.0.0.1:6379/0",
        "The state store (and the broker unless BROKER_URL is set); also redis+cluster:// "
        "and redis+sentinel://.", url_with_password=True)
    redis_key_prefix: Annotated[str, KeyPrefix()] = setting(
        "RECOVERY_REDIS_PREFIX", "recovery:", "Prefix of every Redis key, queues included.")
    primary_api_url: Annotated[str, BaseUrl()] = setting(
        "PRIMARY_API_URL", "http://127.0.0.1:8080", "Base URL of the seed integration.")
    secondary_api_url: Annotated[str | None, BaseUrl(optional=True)] = setting(
        "SECONDARY_API_URL", None, "The seed integration's api fallback (priority 1).")
    fallback_api_url: Annotated[str | None, BaseUrl(optional=True)] = setting(
        "FALLBACK_API_URL", None, "The seed integration's api fallback (priority 3).")
    api_timeout_ms: Millis = setting(
        "API_TIMEOUT", 30000, "HTTP timeout per call in ms, also its overall deadline.")
    circuit_breaker_threshold: Count = setting(
        "CIRCUIT_BREAKER_THRESHOLD", 5, "Consecutive failures that open the breaker.")
    circuit_breaker_timeout_ms: Millis = setting(
        "CIRCUIT_BREAKER_TIMEOUT", 60000, "Call timeout under the breaker in ms.")
    circuit_breaker_reset_timeout_ms: Millis = setting(
        "CIRCUIT_BREAKER_RESET_TIMEOUT", 30000, "Open time before a half-open probe in ms.")
    max_retries: Count = setting("MAX_RETRIES", 3, "Total attempts of a job.")
    retry_delay_ms: Annotated[int, Whole(0, MAX_MS, "ms")] = setting(
        "RETRY_DELAY", 1000, "First retry delay in ms.")
    retry_backoff_factor: Annotated[float, Factor()] = setting(
        "RETRY_BACKOFF_FACTOR", 2.0, "Growth of the delay per attempt.")
    retry_max_delay_ms: Millis = setting("RETRY_MAX_DELAY", 30000, "Cap on one delay in ms.")
    dlq_enabled: Annotated[bool, Flag()] = setting(
        "DLQ_ENABLED", True, "false: failed jobs end failed in the audit trail only.")
    dlq_max_retries: Count = setting(
        "DLQ_MAX_RETRIES", 5, "Replays of one job before it is quarantined.")
    dlq_retry_delay_ms: Millis = setting(
        "DLQ_RETRY_DELAY", 300000, "Interval of the scheduled capped replay in ms.")
    dlq_max_entries: Count = setting(
        "DLQ_MAX_ENTRIES", 10000, "Entries the DLQ keeps before the oldest are archived.")
    dlq_max_age_days: Annotated[int, Whole(1, 36500)] = setting(
        "DLQ_MAX_AGE_DAYS", 180, "Days an entry stays in the DLQ before it is archived.")
    dlq_auto_replay_client_errors: Annotated[bool, Flag()] = setting(
        "DLQ_AUTO_REPLAY_CLIENT_ERRORS", False, "The scheduled replay also replays client errors.")
    dlq_auto_replay_poison: Annotated[bool, Flag()] = setting(
        "DLQ_AUTO_REPLAY_POISON", False, "The scheduled replay also replays poison entries.")
    encryption_keys: Annotated[tuple[str, ...], FernetKeys()] = setting(
        "RECOVERY_ENCRYPTION_KEYS", (), "Comma-separated Fernet keys for job payloads in Redis.",
        secret=True)
    sentry_dsn: Annotated[str | None, HttpUrl(optional=True)] = setting(
        "SENTRY_DSN", None, "Sentry reporting (secrets scrubbed).", url_with_password=True)
    metrics_enabled: Annotated[bool, Flag()] = setting(
        "METRICS_ENABLED", True, "Prometheus metrics.")
    task_events: Annotated[bool, Flag()] = setting(
        "TASK_EVENTS", False, "Workers send Celery task events from the start.")
    health_check_interval_ms: Millis = setting(
        "HEALTH_CHECK_INTERVAL", 30000, "Default health check interval in ms.")
    health_check_timeout_ms: Millis = setting(
        "HEALTH_CHECK_TIMEOUT", 5000, "Default health check timeout in ms.")
    rate_limit_window_ms: Millis = setting(
        "RATE_LIMIT_WINDOW", 60000, "Default cluster-wide rate limit window in ms.")
    rate_limit_max_requests: Count = setting(
        "RATE_LIMIT_MAX_REQUESTS", 100, "Default calls per window, across all workers.")
    enable_circuit_breaker: Annotated[bool, Flag()] = setting(
        "ENABLE_CIRCUIT_BREAKER", True, "false turns breakers off.")
    enable_graceful_degradation: Annotated[bool, Flag()] = setting(
        "ENABLE_GRACEFUL_DEGRADATION", True, "false turns fallbacks off.")
    enable_auto_recovery: Annotated[bool, Flag()] = setting(
        "ENABLE_AUTO_RECOVERY", True, "Health checks may close breakers; scheduled DLQ replay.")
    integrations_file: Annotated[str | None, OptionalText()] = setting(
        "RECOVERY_INTEGRATIONS", None, "Path of the integrations YAML file.")
    visibility_timeout_s: Annotated[int, Whole(1, MAX_MS // 1000, "s")] = setting(
        "REDIS_VISIBILITY_TIMEOUT", 3600, "Redis broker redelivery time in seconds.")
    max_defer_ms: Millis = setting(
        "MAX_DEFER_WINDOW", 600000, "Total time in ms a job may wait on an open breaker or a "
        "full rate limit.")
    poison_max_deliveries: Count = setting(
        "POISON_MAX_DELIVERIES", 3, "Deliveries of one message before it is dead-lettered.")
    idempotency_ttl_ms: Annotated[int, Whole(MIN_IDEMPOTENCY_TTL_MS, MAX_MS, "ms")] = setting(
        "IDEMPOTENCY_TTL", 86_400_000, "How long in ms a caller-given key's record is kept.")
    audit_spool_max_entries: Annotated[int, Whole(1000, MAX_SPOOL_ENTRIES)] = setting(
        "AUDIT_SPOOL_MAX_ENTRIES", 1_000_000, "Cap of the Redis audit spool.")
    max_request_bytes: Annotated[int, Whole(*MAX_REQUEST_BYTES_RANGE, "bytes")] = setting(
        "MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES, "Cap on one job's request at enqueue.")
    serve_token: Annotated[str | None, Token()] = setting(
        "SERVE_TOKEN", None, "Bearer token /health and /metrics of `serve` then require.",
        secret=True)
    retry_after_max_ms: Annotated[int, Whole(0, MAX_MS, "ms")] = derived(
        "RETRY_AFTER_MAX", lambda validated: validated["max_defer_ms"],
        "Longest pause in ms one Retry-After may set; defaults to MAX_DEFER_WINDOW.")
    cache_max_body_bytes: Annotated[int, Whole(0, MAX_BYTES, "bytes")] = setting(
        "CACHE_MAX_BODY_BYTES", 256 * 1024, "Largest answer the cache fallback keeps.")
    max_response_bytes: Annotated[int, Whole(1, MAX_BYTES, "bytes")] = setting(
        "MAX_RESPONSE_BYTES", 10 * 1024 * 1024, "Largest answer read; larger ones are refused.")
    console_host: Annotated[str, Text("127.0.0.1")] = setting(
        "CONSOLE_HOST", "127.0.0.1", "Address the operator console binds.")
    console_port: Annotated[int, Whole(1, 65535)] = setting(
        "CONSOLE_PORT", 9809, "Port of the operator console.")
    console_users: Annotated[tuple[tuple[str, str, str], ...], ConsoleUsers()] = setting(
        "CONSOLE_USERS", (), "Console users, name:role:hash,...", secret=True)
    console_secret_key: Annotated[str | None, SecretKey(CONSOLE_SECRET_MIN)] = setting(
        "CONSOLE_SECRET_KEY", None, "Signs the console's session cookie.", secret=True)
    console_auth_header: Annotated[str | None, OptionalText(
        _HEADER, "a header name such as X-Forwarded-User")] = setting(
        "CONSOLE_AUTH_HEADER", None, "Reverse-proxy mode: the header naming the user.")
    console_header_roles: Annotated[tuple[tuple[str, str], ...], ConsolePairs(
        2, "user:role (or *:role for everyone else)")] = setting(
        "CONSOLE_HEADER_ROLES", (), "Proxy mode's role mapping, user:role,... (*:role for "
        "everyone else).")
    console_secure_cookies: Annotated[bool | None, Flag(optional=True)] = setting(
        "CONSOLE_SECURE_COOKIES", None, "Mark the session cookie Secure; unset: unless the "
        "console binds loopback.")
    workflows_file: Annotated[str | None, OptionalText()] = setting(
        "RECOVERY_WORKFLOWS", None, "Path of a YAML file with a workflows: list.")
    result_ttl_ms: Annotated[int, Whole(1000, MAX_MS, "ms")] = setting(
        "RESULT_TTL", 86_400_000, "How long in ms a job's outcome is kept in Redis.")
    result_max_bytes: Annotated[int, Whole(*RESULT_MAX_BYTES_RANGE, "bytes")] = setting(
        "RESULT_MAX_BYTES", 1024 * 1024, "Largest response body kept with an outcome.")
    callback_queue: Annotated[str, Text("celery", _QUEUE, "a queue name of letters, digits "
                                        "and _.:- (at most 100)")] = setting(
        "CALLBACK_QUEUE", "celery", "Queue the on_success / on_failure tasks are sent to.")
    task_sent_events: Annotated[bool, Flag()] = setting(
        "TASK_SENT_EVENTS", True, "Producers publish a task-sent event per enqueue.")
    worker_pool: Annotated[str, Choice(WORKER_POOLS, "threads")] = setting(
        "WORKER_POOL", "threads", "Celery's pool for `celery worker`.")
    worker_concurrency: Annotated[int, Whole(1, MAX_WORKER_CONCURRENCY)] = derived(
        "WORKER_CONCURRENCY", _default_concurrency,
        f"Threads (or processes) per worker; defaults to {DEFAULT_WORKER_CONCURRENCY} with "
        "threads, else one per core.")
    broker_url: Annotated[str | None, BrokerUrl()] = setting(
        "BROKER_URL", None, "The Celery broker (amqp:// or redis://); unset: REDIS_URL.",
        url_with_password=True)
    rabbitmq_consumer_timeout_s: Annotated[int, Whole(60, MAX_MS // 1000, "s")] = setting(
        "RABBITMQ_CONSUMER_TIMEOUT", 1800, "RabbitMQ's consumer_timeout in seconds, mirrored.")
    alert_webhook_url: Annotated[str | None, WebhookUrl()] = setting(
        "ALERT_WEBHOOK_URL", None, "Receives every alert as a JSON POST.")
    health_check_tries: Annotated[int, Whole(1, 10)] = setting(
        "HEALTH_CHECK_TRIES", 2, "Attempts per health check.")
    alert_webhook_tries: Annotated[int, Whole(1, 20)] = setting(
        "ALERT_WEBHOOK_TRIES", 5, "Attempts per alert delivery.")
    beat_lock_ttl_s: Annotated[int, Whole(3, 3600)] = setting(
        "BEAT_LOCK_TTL", 60, "Seconds the single-beat lock lives without renewal.")
    sentry_environment: Annotated[str | None, OptionalText()] = setting(
        "SENTRY_ENVIRONMENT", None, "Sentry's environment tag.")
    serve_host: Annotated[str, Text("127.0.0.1")] = setting(
        "SERVE_HOST", "127.0.0.1", "Default --host of `recovery-cli serve`.")
    serve_port: Annotated[int, Whole(0, 65535)] = setting(
        "SERVE_PORT", 9808, "Default --port of `recovery-cli serve` (0 picks a free one).")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values `load_settings` (or a caller) hands over: no .env file, secrets
        directory or process environment is read behind its back."""
        return (init_settings,)

    @model_validator(mode="after")
    def _check_broker(self) -> Settings:
        """Celery cannot use a Redis Cluster or Sentinel as its broker."""
        if self.broker_url is None and redis_urls.kind_of(self.redis_url) != "single":
            raise refusal("REDIS_URL names a Redis Cluster or Sentinel, which Celery cannot use "
                          "as its broker; set BROKER_URL to RabbitMQ "
                          "(amqp://user:password@host:5672/vhost) or a plain redis:// URL.")
        return self

    @model_validator(mode="after")
    def _check_countdowns(self) -> Settings:
        """Refuse settings whose longest countdown could outlast the broker's visibility
        timeout: Redis redelivers a message that is not acknowledged within it, so a retry
        scheduled further out than that would run twice."""
        countdowns = (("RETRY_MAX_DELAY", self.retry_max_delay_ms),
                      ("CIRCUIT_BREAKER_RESET_TIMEOUT", self.circuit_breaker_reset_timeout_ms),
                      ("RATE_LIMIT_WINDOW", self.rate_limit_window_ms))
        limit_s = self.visibility_timeout_s
        for name, millis in countdowns:
            if millis / 1000 >= limit_s:
                raise refusal(
                    f"{name} is {millis} ms ({millis / 1000:g} s), which is not below "
                    f"REDIS_VISIBILITY_TIMEOUT ({limit_s} s): Redis would redeliver a job "
                    f"waiting that long and it would run twice. Lower {name} or raise "
                    f"REDIS_VISIBILITY_TIMEOUT to at least {millis // 1000 + 1} seconds.")
        return self

    @model_validator(mode="after")
    def _check_consumer_timeout(self) -> Settings:
        """On RabbitMQ a job holds its message while it runs (late ack), and RabbitMQ closes
        the channel of a delivery held longer than its consumer_timeout: the job would run
        again."""
        limit_s = self.rabbitmq_consumer_timeout_s
        if (url_scheme(self.broker_url or "") in AMQP_SCHEMES
                and self.api_timeout_ms / 1000 >= limit_s / 2):
            raise refusal(
                f"API_TIMEOUT is {self.api_timeout_ms} ms, which is not below half of "
                f"RABBITMQ_CONSUMER_TIMEOUT ({limit_s} s): RabbitMQ closes the channel of a job "
                "that holds its message that long, and the job runs again. Lower API_TIMEOUT, "
                "or raise consumer_timeout in RabbitMQ and RABBITMQ_CONSUMER_TIMEOUT with it.")
        return self


#: Field name -> environment variable, and every variable the settings read.
_VARIABLE_OF = {name: str(field.alias) for name, field in Settings.model_fields.items()}
VARIABLES = tuple(_VARIABLE_OF.values())


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting from `environ` (default: the process environment)."""
    source = os.environ if environ is None else environ
    given: dict[str, Any] = {name: source[name] for name in VARIABLES if name in source}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(_sentence(exc.errors(include_url=False)[0])) from None


def _sentence(error: ErrorDetails) -> str:
    """The first refusal as a sentence: a kind's phrase follows its variable's name; a check
    across variables (no location) is a sentence already."""
    if not error["loc"]:
        return error["msg"]
    where = str(error["loc"][0])
    return f"{_VARIABLE_OF.get(where, where)} {error['msg']}"


def settings_json_schema() -> dict[str, Any]:
    """The JSON Schema of the environment the settings read: one property per variable, with
    its description and default; secrets are marked writeOnly."""
    schema = Settings.model_json_schema(by_alias=True)
    schema.pop("additionalProperties", None)  # an environment holds other variables too
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded from the environment on first use."""
    return load_settings()


def reset_settings() -> None:
    """Forget the cached settings so the next `get_settings()` reads the environment again."""
    get_settings.cache_clear()
