"""Every setting of the system, read from the environment and validated once at start.

A bad value stops the process with a `SettingsError` that names the variable, shows the value it
got and says what is accepted, so an operator can fix the deployment without reading code.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from recovery.config import redis_urls
from recovery.config.keys import check_keys

#: Longest duration any millisecond setting may have; anything above is treated as a typo.
MAX_MS = 7 * 24 * 60 * 60 * 1000
#: Largest count (retries, thresholds, request limits) we accept.
MAX_COUNT = 1_000_000
#: Largest byte size (response and cache limits) we accept: 1 GiB.
MAX_BYTES = 1024 ** 3
#: Largest exponential-backoff factor we accept.
MAX_BACKOFF_FACTOR = 100.0
#: Shortest idempotency TTL: a key must outlive its job's retries (one minute at least).
MIN_IDEMPOTENCY_TTL_MS = 60_000
#: Largest audit spool cap: 100 million entries is far beyond any Redis's memory.
MAX_SPOOL_ENTRIES = 100_000_000
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Default cap on one request at enqueue: body, query parameters and headers together.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
#: Bounds of MAX_REQUEST_BYTES: every message is kept in Redis, the DLQ and the audit spool.
MAX_REQUEST_BYTES_RANGE = (1024, 16 * 1024 * 1024)
#: SERVE_TOKEN length bounds: long enough not to be guessed, short enough for one header.
SERVE_TOKEN_LENGTH = (16, 256)
#: Roles of the operator console: viewer reads, operator also acts.
CONSOLE_ROLES = ("viewer", "operator")
#: Shortest CONSOLE_SECRET_KEY: it signs the session cookie.
CONSOLE_SECRET_MIN = 32
#: RESULT_MAX_BYTES bounds: an outcome lives in Redis for RESULT_TTL, so it stays small.
RESULT_MAX_BYTES_RANGE = (0, 64 * 1024 * 1024)
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
#: Worker pools a deployment may choose (WORKER_POOL). gevent and eventlet are left out:
#: psycopg 3 waits for PostgreSQL inside libpq, where their hub cannot switch away.
WORKER_POOLS = ("threads", "prefork", "solo")
#: Threads a worker runs jobs on by default: API calls mostly wait, so many per core.
DEFAULT_WORKER_CONCURRENCY = 64
#: Most threads one worker process may run; past this a process spends more on switching
#: between threads (and holding sockets) than it gains, so run more processes instead.
MAX_WORKER_CONCURRENCY = 1024

_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_SPACE = " \t\r\n\f\v"  # str.strip() would also drop Unicode separators float() refuses
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_DATABASE_PREFIXES = ("postgresql://", "postgresql+psycopg://", "sqlite:///")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")  # RabbitMQ, as recovery.config.broker reads them
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")  # RFC 6750 b64token


class SettingsError(ValueError):
    """A setting in the environment is missing, malformed or out of range."""


@dataclass(frozen=True)
class Settings:
    """The validated configuration. Durations are milliseconds unless the name says otherwise."""

    log_level: str
    service_name: str
    database_url: str
    redis_url: str
    redis_key_prefix: str
    primary_api_url: str
    secondary_api_url: str | None
    fallback_api_url: str | None
    api_timeout_ms: int
    circuit_breaker_threshold: int
    circuit_breaker_timeout_ms: int
    circuit_breaker_reset_timeout_ms: int
    max_retries: int
    retry_delay_ms: int
    retry_backoff_factor: float
    retry_max_delay_ms: int
    dlq_enabled: bool
    dlq_max_retries: int
    dlq_retry_delay_ms: int
    dlq_max_entries: int
    dlq_max_age_days: int
    dlq_auto_replay_client_errors: bool
    dlq_auto_replay_poison: bool
    encryption_keys: tuple[str, ...] = field(repr=False)
    sentry_dsn: str | None
    metrics_enabled: bool
    task_events: bool
    health_check_interval_ms: int
    health_check_timeout_ms: int
    rate_limit_window_ms: int
    rate_limit_max_requests: int
    enable_circuit_breaker: bool
    enable_graceful_degradation: bool
    enable_auto_recovery: bool
    integrations_file: str | None
    visibility_timeout_s: int
    max_defer_ms: int
    poison_max_deliveries: int
    idempotency_ttl_ms: int
    audit_spool_max_entries: int
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    serve_token: str | None = None
    retry_after_max_ms: int = 600000  # longest pause one Retry-After may set
    cache_max_body_bytes: int = 256 * 1024  # larger answers are not kept by the cache fallback
    max_response_bytes: int = 10 * 1024 * 1024  # larger answers are refused while read
    console_host: str = "127.0.0.1"
    console_port: int = 9809
    console_users: tuple[tuple[str, str, str], ...] = ()  # (name, role, password hash)
    console_secret_key: str | None = None
    console_auth_header: str | None = None
    console_header_roles: tuple[tuple[str, str], ...] = ()  # (user or "*", role)
    console_secure_cookies: bool | None = None  # None: secure unless bound to loopback
    workflows_file: str | None = None  # RECOVERY_WORKFLOWS: a YAML file of workflows
    result_ttl_ms: int = 86_400_000  # how long a job's outcome is kept in Redis
    result_max_bytes: int = 1024 * 1024  # a larger body is not kept with the outcome
    callback_queue: str = "celery"  # where on_success / on_failure tasks are sent
    task_sent_events: bool = True  # producers publish a task-sent event per enqueue (Flower)
    worker_pool: str = "threads"  # Celery's pool for `celery worker` (WORKER_POOLS)
    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY  # threads (or processes) of the pool
    broker_url: str | None = None  # None: REDIS_URL is the broker too (recovery.config.broker)
    rabbitmq_consumer_timeout_s: int = 1800  # RabbitMQ's consumer_timeout, mirrored
    health_check_tries: int = 2  # attempts per health check, retried with backoff
    alert_webhook_url: str | None = None  # receives every alert as a JSON POST
    alert_webhook_tries: int = 5  # attempts per alert delivery
    beat_lock_ttl_s: int = 60  # how long the single-beat lock lives without renewal
    sentry_environment: str | None = None  # Sentry's `environment` tag
    serve_host: str = "127.0.0.1"  # default --host of `recovery-cli serve`
    serve_port: int = 9808  # default --port of `recovery-cli serve`


def show(value: str) -> str:
    """Quote a value for an error message, shortened so a huge value cannot flood the log."""
    if len(value) > 80:
        value = value[:77] + "..."
    return repr(value)


def is_http_url(value: str) -> bool:
    """True for an absolute http:// or https:// URL that names a host (and a valid port)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def base_url_problem(url: str) -> tuple[str, str] | None:
    """Why an http(s) URL cannot root an integration's requests, or None: (what is wrong, what
    to do), both phrases.

    User information would be sent as credentials with every call (and shown wherever the URL
    is); a query string or fragment would end up in the middle of every joined URL.
    """
    if "@" in urlsplit(url).netloc:
        return ("must not carry user information (user:password@)",
                "put credentials in the integration's headers instead")
    if "?" in url:
        return ("must not have a query string ('?')",
                "pass query parameters with each job (params) instead")
    if "#" in url:
        return "must not have a fragment ('#')", "remove it"
    return None


def shown_base_url(url: str) -> str:
    """A URL for an error message with its user information and query hidden (they may hold
    secrets)."""
    hidden = re.sub(r"(://)[^/?#]*@", r"\1***@", url)
    if "?" in hidden:
        hidden = hidden.split("?", 1)[0] + "?..."
    return show(hidden)


def _hide_password(url: str) -> str:
    """Replace the password in `scheme://user:password@host` so errors never print it."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class _Reader:
    """Reads one variable at a time and raises `SettingsError` naming it when it is wrong."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str, default: str) -> str:
        value = self._environ.get(name)
        return default if value is None else value

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip(_SPACE)
        return value or None

    def text(self, name: str, default: str) -> str:
        value = self.raw(name, default).strip(_SPACE)
        if not value:
            raise SettingsError(f"{name} must not be empty; unset it to use {default!r}.")
        return value

    def whole(self, name: str, default: int, minimum: int, maximum: int, unit: str = "") -> int:
        text = self.raw(name, str(default))
        stripped = text.strip(_SPACE)
        if not _WHOLE.fullmatch(stripped):
            raise SettingsError(f"{name} must be a whole number, got {show(text)}.")
        digits = stripped.lstrip("+-")
        negative = stripped.startswith("-")
        # Python refuses int() on very long digit strings; such a number is absurd anyway.
        value = int(stripped) if len(digits) <= 20 else (-1 if negative else maximum + 1)
        suffix = f" {unit}" if unit else ""
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}{suffix}, got {show(text)}.")
        if value > maximum:
            limit = f"{maximum}{suffix}" + (" (7 days)" if unit in ("ms", "s") else "")
            raise SettingsError(
                f"{name} must be at most {limit}, got {show(text)}; "
                "a value this large is almost certainly a mistake."
            )
        return value

    def count(self, name: str, default: int) -> int:
        return self.whole(name, default, 1, MAX_COUNT)

    def millis(self, name: str, default: int, minimum: int = 1) -> int:
        return self.whole(name, default, minimum, MAX_MS, "ms")

    def factor(self, name: str, default: float) -> float:
        text = self.raw(name, str(default))
        if not _DECIMAL.fullmatch(text.strip(_SPACE)):
            raise SettingsError(f"{name} must be a number such as 2 or 1.5, got {show(text)}.")
        value = float(text.strip(_SPACE))
        if value < 1:
            raise SettingsError(
                f"{name} must be at least 1 (1 keeps every delay the same), got {show(text)}."
            )
        if value > MAX_BACKOFF_FACTOR or math.isinf(value):
            raise SettingsError(
                f"{name} must be at most {MAX_BACKOFF_FACTOR:g}, got {show(text)}; "
                "a factor this large is almost certainly a mistake."
            )
        return value

    def flag(self, name: str, default: bool) -> bool:
        text = self.raw(name, "true" if default else "false")
        word = text.strip(_SPACE).lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise SettingsError(
            f"{name} must be true or false (1/0 and yes/no also work), got {show(text)}."
        )

    def log_level(self, name: str, default: str) -> str:
        text = self.raw(name, default)
        level = text.strip(_SPACE).lower()
        if level not in LOG_LEVELS:
            raise SettingsError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {show(text)}.")
        return level

    def http_url(self, name: str, default: str) -> str:
        text = self.raw(name, default).strip(_SPACE)
        if not is_http_url(text):
            raise SettingsError(
                f"{name} must be an http:// or https:// URL with a host, "
                f"e.g. https://api.example.com, got {show(_hide_password(text))}."
            )
        return text

    def optional_http_url(self, name: str) -> str | None:
        """Like `http_url`, but unset or empty means None."""
        return None if self.optional(name) is None else self.http_url(name, "")

    def encryption_keys(self, name: str) -> tuple[str, ...]:
        """Comma-separated Fernet keys, or none; an error names the bad key's position only."""
        text = self.optional(name)
        if text is None:
            return ()
        try:
            return check_keys(text)
        except ValueError as exc:
            raise SettingsError(f"{name} must be comma-separated Fernet keys; {exc}.") from None

    def base_url(self, name: str, default: str) -> str:
        """An http(s) URL that can root an integration's requests (`base_url_problem`)."""
        text = self.http_url(name, default)
        problem = base_url_problem(text)
        if problem:
            what, hint = problem
            raise SettingsError(f"{name} {what}, got {shown_base_url(text)}; {hint}.")
        return text

    def optional_base_url(self, name: str) -> str | None:
        """Like `base_url`, but unset or empty means None."""
        return None if self.optional(name) is None else self.base_url(name, "")

    def token(self, name: str) -> str | None:
        """An optional bearer token; errors never show its value."""
        value = self.optional(name)
        if value is None:
            return None
        low, high = SERVE_TOKEN_LENGTH
        hint = "(not shown: it is a secret); generate one with `openssl rand -hex 32`"
        if not low <= len(value) <= high:
            raise SettingsError(f"{name} must be {low} to {high} characters long, got one of "
                                f"{len(value)} characters {hint}.")
        if not _TOKEN.fullmatch(value):
            raise SettingsError(f"{name} may hold only letters, digits and -._~+/=, got other "
                                f"characters {hint}.")
        return value

    def database_url(self, name: str, default: str) -> str:
        text = self.raw(name, default).strip(_SPACE)
        if not text.startswith(_DATABASE_PREFIXES) or text in _DATABASE_PREFIXES:
            raise SettingsError(
                f"{name} must be a postgresql://, postgresql+psycopg:// or sqlite:///path URL, "
                f"got {show(_hide_password(text))}."
            )
        return text

    def redis_url(self, name: str, default: str) -> str:
        text = self.raw(name, default).strip(_SPACE)
        if redis_urls.kind_of(text) in ("cluster", "sentinel"):
            return _state_store_url(name, text)
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in _REDIS_SCHEMES or not (parts.hostname or parts.path):
            raise SettingsError(
                f"{name} must be a redis://host:port/db, rediss://, unix://, redis+cluster:// "
                f"or redis+sentinel:// URL, "
                f"got {show(_hide_password(text))}."
            )
        return text

    def key_prefix(self, name: str, default: str) -> str:
        text = self.raw(name, default)
        if not text or len(text) > 64 or any(ch.isspace() for ch in text):
            raise SettingsError(
                f"{name} must be 1 to 64 characters without spaces, such as 'recovery:', "
                f"got {show(text)}."
            )
        return text


def _state_store_url(name: str, text: str) -> str:
    """A Redis Cluster or Sentinel URL (recovery.config.redis_urls), checked without sockets."""
    try:
        redis_urls.parse(text)
    except redis_urls.RedisUrlError as exc:
        raise SettingsError(f"{name} is not a usable Redis Cluster or Sentinel URL: {exc}. "
                            f"It was {show(_hide_password(text))}; the README (Running in "
                            "production) shows the forms.") from None
    return text


def _broker_url(r: _Reader, redis_url: str) -> str | None:
    """BROKER_URL: RabbitMQ (amqp://) or a Redis of its own; unset, REDIS_URL is the broker."""
    text = r.optional("BROKER_URL")
    if text is None:
        if redis_urls.kind_of(redis_url) != "single":
            raise SettingsError("REDIS_URL names a Redis Cluster or Sentinel, which Celery "
                                "cannot use as its broker; set BROKER_URL to RabbitMQ "
                                "(amqp://user:password@host:5672/vhost) or a plain redis:// URL.")
        return None
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in _AMQP_SCHEMES + _REDIS_SCHEMES:
        raise SettingsError(f"BROKER_URL must be an amqp://, amqps:// (RabbitMQ) or redis:// "
                            f"URL, got {show(_hide_password(text))}.")
    return text


_CONSOLE_NAME = re.compile(r"[A-Za-z0-9._@*-]{1,64}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


def _console_pairs(r: _Reader, name: str, parts: int, hint: str) -> list[list[str]]:
    """`a:b[:c],...` entries whose first part is a name and second a console role."""
    found: list[list[str]] = []
    for index, item in enumerate((r.optional(name) or "").split(","), 1):
        if not item.strip():
            continue
        fields = [part.strip() for part in item.split(":", parts - 1)]
        if len(fields) != parts or not _CONSOLE_NAME.fullmatch(fields[0]) or not all(fields):
            raise SettingsError(f"{name} entry {index} must look like {hint}.")
        if fields[1] not in CONSOLE_ROLES:
            raise SettingsError(f"{name} entry {index} has the role {show(fields[1])}; use "
                                f"{' or '.join(CONSOLE_ROLES)}.")
        found.append(fields)
    return found


def _console_settings(r: _Reader) -> dict[str, Any]:
    """The operator console's settings (whether it may start is decided by the console)."""
    users = _console_pairs(r, "CONSOLE_USERS", 3, "name:role:hash, the hash made by "
                           "`recovery-cli console hash-password` (not shown: it is a secret)")
    if any("$" not in fields[2] for fields in users):
        raise SettingsError("CONSOLE_USERS holds a password that is not a hash; make one with "
                            "`recovery-cli console hash-password` (the value is not shown).")
    secret = r.optional("CONSOLE_SECRET_KEY")
    if secret is not None and len(secret) < CONSOLE_SECRET_MIN:
        raise SettingsError(f"CONSOLE_SECRET_KEY must be at least {CONSOLE_SECRET_MIN} "
                            f"characters, got {len(secret)} (not shown: it is a secret); "
                            "generate one with `openssl rand -hex 32`.")
    header = r.optional("CONSOLE_AUTH_HEADER")
    if header is not None and not _HEADER_NAME.fullmatch(header):
        raise SettingsError(f"CONSOLE_AUTH_HEADER must be a header name such as "
                            f"X-Forwarded-User, got {show(header)}.")
    roles = _console_pairs(r, "CONSOLE_HEADER_ROLES", 2, "user:role (or *:role for everyone "
                           "else)")
    secure = None if r.optional("CONSOLE_SECURE_COOKIES") is None else r.flag(
        "CONSOLE_SECURE_COOKIES", True)
    return {"console_host": r.text("CONSOLE_HOST", "127.0.0.1"),
            "console_port": r.whole("CONSOLE_PORT", 9809, 1, 65535),
            "console_users": tuple(tuple(fields) for fields in users),
            "console_secret_key": secret, "console_auth_header": header,
            "console_header_roles": tuple(tuple(fields) for fields in roles),
            "console_secure_cookies": secure}


def _result_settings(r: _Reader) -> dict[str, Any]:
    """Results and callbacks (`recovery.state.results`, `recovery.engine.results`)."""
    queue = r.text("CALLBACK_QUEUE", "celery")
    if not _QUEUE_NAME.fullmatch(queue):
        raise SettingsError(f"CALLBACK_QUEUE must be a queue name of letters, digits and "
                            f"_.:- (at most 100), got {show(queue)}.")
    return {"result_ttl_ms": r.whole("RESULT_TTL", 86_400_000, 1000, MAX_MS, "ms"),
            "result_max_bytes": r.whole("RESULT_MAX_BYTES", 1024 * 1024,
                                        *RESULT_MAX_BYTES_RANGE, "bytes"),
            "callback_queue": queue}
def _worker_settings(r: _Reader) -> dict[str, Any]:
    """The pool and its size: 64 threads by default; a process pool defaults to one process
    per core (64 processes would be 64 copies of the worker)."""
    pool = r.text("WORKER_POOL", "threads").lower()
    if pool not in WORKER_POOLS:
        raise SettingsError(f"WORKER_POOL must be one of {', '.join(WORKER_POOLS)}, got "
                            f"{show(r.raw('WORKER_POOL', ''))}.")
    default = DEFAULT_WORKER_CONCURRENCY if pool == "threads" else os.cpu_count() or 1
    return {"task_sent_events": r.flag("TASK_SENT_EVENTS", True), "worker_pool": pool,
            "worker_concurrency": r.whole("WORKER_CONCURRENCY", default, 1,
                                          MAX_WORKER_CONCURRENCY)}


def _check_countdowns(settings: Settings) -> None:
    """Refuse settings whose longest countdown could outlast the broker's visibility timeout.

    Redis redelivers a message that is not acknowledged within the visibility timeout, so a
    retry scheduled further out than that would run twice.
    """
    countdowns = (
        ("RETRY_MAX_DELAY", settings.retry_max_delay_ms),
        ("CIRCUIT_BREAKER_RESET_TIMEOUT", settings.circuit_breaker_reset_timeout_ms),
        ("RATE_LIMIT_WINDOW", settings.rate_limit_window_ms),
    )
    for name, millis in countdowns:
        if millis / 1000 >= settings.visibility_timeout_s:
            raise SettingsError(
                f"{name} is {millis} ms ({millis / 1000:g} s), which is not below "
                f"REDIS_VISIBILITY_TIMEOUT ({settings.visibility_timeout_s} s): Redis would "
                f"redeliver a job waiting that long and it would run twice. Lower {name} or "
                f"raise REDIS_VISIBILITY_TIMEOUT to at least {millis // 1000 + 1} seconds."
            )


def _check_consumer_timeout(settings: Settings) -> None:
    """On RabbitMQ a job holds its message while it runs (late ack), and RabbitMQ closes the
    channel of a delivery held longer than its consumer_timeout: the job would run again."""
    scheme = (settings.broker_url or "").split("://", 1)[0].lower()
    limit_s = settings.rabbitmq_consumer_timeout_s
    if scheme in _AMQP_SCHEMES and settings.api_timeout_ms / 1000 >= limit_s / 2:
        raise SettingsError(
            f"API_TIMEOUT is {settings.api_timeout_ms} ms, which is not below half of "
            f"RABBITMQ_CONSUMER_TIMEOUT ({limit_s} s): RabbitMQ closes the channel of a job "
            "that holds its message that long, and the job runs again. Lower API_TIMEOUT, or "
            "raise consumer_timeout in RabbitMQ and RABBITMQ_CONSUMER_TIMEOUT with it.")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting from `environ` (default: the process environment)."""
    r = _Reader(os.environ if environ is None else environ)
    max_defer_ms = r.millis("MAX_DEFER_WINDOW", 600000)
    settings = Settings(
        log_level=r.log_level("LOG_LEVEL", "info"),
        service_name=r.text("SERVICE_NAME", "api-recovery"),
        database_url=r.database_url(
            "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        redis_url=r.redis_url("REDIS_URL", "redis://127.0.0.1:6379/0"),
        redis_key_prefix=r.key_prefix("RECOVERY_REDIS_PREFIX", "recovery:"),
        primary_api_url=r.base_url("PRIMARY_API_URL", "http://127.0.0.1:8080"),
        secondary_api_url=r.optional_base_url("SECONDARY_API_URL"),
        fallback_api_url=r.optional_base_url("FALLBACK_API_URL"),
        api_timeout_ms=r.millis("API_TIMEOUT", 30000),
        circuit_breaker_threshold=r.count("CIRCUIT_BREAKER_THRESHOLD", 5),
        circuit_breaker_timeout_ms=r.millis("CIRCUIT_BREAKER_TIMEOUT", 60000),
        circuit_breaker_reset_timeout_ms=r.millis("CIRCUIT_BREAKER_RESET_TIMEOUT", 30000),
        max_retries=r.count("MAX_RETRIES", 3),
        retry_delay_ms=r.millis("RETRY_DELAY", 1000, minimum=0),
        retry_backoff_factor=r.factor("RETRY_BACKOFF_FACTOR", 2.0),
        retry_max_delay_ms=r.millis("RETRY_MAX_DELAY", 30000),
        dlq_enabled=r.flag("DLQ_ENABLED", True),
        dlq_max_retries=r.count("DLQ_MAX_RETRIES", 5),
        dlq_retry_delay_ms=r.millis("DLQ_RETRY_DELAY", 300000),
        dlq_max_entries=r.count("DLQ_MAX_ENTRIES", 10000),
        dlq_max_age_days=r.whole("DLQ_MAX_AGE_DAYS", 180, 1, 36500),
        dlq_auto_replay_client_errors=r.flag("DLQ_AUTO_REPLAY_CLIENT_ERRORS", False),
        dlq_auto_replay_poison=r.flag("DLQ_AUTO_REPLAY_POISON", False),
        encryption_keys=r.encryption_keys("RECOVERY_ENCRYPTION_KEYS"),
        sentry_dsn=r.optional_http_url("SENTRY_DSN"),
        metrics_enabled=r.flag("METRICS_ENABLED", True),
        task_events=r.flag("TASK_EVENTS", False),
        health_check_interval_ms=r.millis("HEALTH_CHECK_INTERVAL", 30000),
        health_check_timeout_ms=r.millis("HEALTH_CHECK_TIMEOUT", 5000),
        rate_limit_window_ms=r.millis("RATE_LIMIT_WINDOW", 60000),
        rate_limit_max_requests=r.count("RATE_LIMIT_MAX_REQUESTS", 100),
        enable_circuit_breaker=r.flag("ENABLE_CIRCUIT_BREAKER", True),
        enable_graceful_degradation=r.flag("ENABLE_GRACEFUL_DEGRADATION", True),
        enable_auto_recovery=r.flag("ENABLE_AUTO_RECOVERY", True),
        integrations_file=r.optional("RECOVERY_INTEGRATIONS"),
        visibility_timeout_s=r.whole("REDIS_VISIBILITY_TIMEOUT", 3600, 1, MAX_MS // 1000, "s"),
        max_defer_ms=max_defer_ms,
        poison_max_deliveries=r.count("POISON_MAX_DELIVERIES", 3),
        idempotency_ttl_ms=r.whole("IDEMPOTENCY_TTL", 86_400_000, MIN_IDEMPOTENCY_TTL_MS,
                                   MAX_MS, "ms"),
        audit_spool_max_entries=r.whole("AUDIT_SPOOL_MAX_ENTRIES", 1_000_000, 1000,
                                        MAX_SPOOL_ENTRIES),
        max_request_bytes=r.whole("MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES,
                                  *MAX_REQUEST_BYTES_RANGE, "bytes"),
        serve_token=r.token("SERVE_TOKEN"),
        retry_after_max_ms=r.millis("RETRY_AFTER_MAX", max_defer_ms, minimum=0),
        cache_max_body_bytes=r.whole("CACHE_MAX_BODY_BYTES", 256 * 1024, 0, MAX_BYTES, "bytes"),
        max_response_bytes=r.whole("MAX_RESPONSE_BYTES", 10 * 1024 * 1024, 1, MAX_BYTES,
                                   "bytes"),
        **_worker_settings(r),
        **_console_settings(r),
        workflows_file=r.optional("RECOVERY_WORKFLOWS"),
        **_result_settings(r),
        broker_url=_broker_url(r, r.redis_url("REDIS_URL", "redis://127.0.0.1:6379/0")),
        rabbitmq_consumer_timeout_s=r.whole("RABBITMQ_CONSUMER_TIMEOUT", 1800, 60,
                                            MAX_MS // 1000, "s"),
        **_ops_settings(r),
    )
    _check_countdowns(settings)
    _check_consumer_timeout(settings)
    return settings


def _ops_settings(r: _Reader) -> dict[str, Any]:
    """Settings of the ops side: health checks, alerts, the beat lock, Sentry, `serve`."""
    webhook = r.optional("ALERT_WEBHOOK_URL")
    if webhook is not None and not is_http_url(webhook):
        raise SettingsError(
            "ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host, such as "
            f"https://hooks.example.com/alerts, got {shown_base_url(webhook)}.")
    return {
        "health_check_tries": r.whole("HEALTH_CHECK_TRIES", 2, 1, 10),
        "alert_webhook_url": webhook,
        "alert_webhook_tries": r.whole("ALERT_WEBHOOK_TRIES", 5, 1, 20),
        "beat_lock_ttl_s": r.whole("BEAT_LOCK_TTL", 60, 3, 3600),
        "sentry_environment": r.optional("SENTRY_ENVIRONMENT"),
        "serve_host": r.text("SERVE_HOST", "127.0.0.1"),
        "serve_port": r.whole("SERVE_PORT", 9808, 0, 65535),
    }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded from the environment on first use."""
    return load_settings()


def reset_settings() -> None:
    """Forget the cached settings so the next `get_settings()` reads the environment again."""
    get_settings.cache_clear()
