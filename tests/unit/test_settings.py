"""Settings: defaults, every validation path with its exact message, the countdown check."""

from __future__ import annotations

import pytest

from recovery.config.settings import (
    Settings,
    SettingsError,
    get_settings,
    load_settings,
    reset_settings,
)


def error_for(**env: str) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    return str(caught.value)


def test_defaults_match_the_documented_values() -> None:
    assert load_settings({}) == Settings(
        log_level="info",
        service_name="api-recovery",
        database_url="postgresql://postgres@127.0.0.1:5432/postgres",
        redis_url="redis://127.0.0.1:6379/0",
        redis_key_prefix="recovery:",
        primary_api_url="http://127.0.0.1:8080",
        secondary_api_url=None,
        fallback_api_url=None,
        api_timeout_ms=30000,
        circuit_breaker_threshold=5,
        circuit_breaker_timeout_ms=60000,
        circuit_breaker_reset_timeout_ms=30000,
        max_retries=3,
        retry_delay_ms=1000,
        retry_backoff_factor=2.0,
        retry_max_delay_ms=30000,
        dlq_enabled=True,
        dlq_max_retries=5,
        dlq_retry_delay_ms=300000,
        dlq_max_entries=10000,
        dlq_max_age_days=180,
        dlq_auto_replay_client_errors=False,
        dlq_auto_replay_poison=False,
        encryption_keys=(),
        sentry_dsn=None,
        metrics_enabled=True,
        task_events=False,
        health_check_interval_ms=30000,
        health_check_timeout_ms=5000,
        rate_limit_window_ms=60000,
        rate_limit_max_requests=100,
        enable_circuit_breaker=True,
        enable_graceful_degradation=True,
        enable_auto_recovery=True,
        integrations_file=None,
        visibility_timeout_s=3600,
        max_defer_ms=600000,
        poison_max_deliveries=3,
        idempotency_ttl_ms=86_400_000,
        audit_spool_max_entries=1_000_000,
        retry_after_max_ms=600000,
        cache_max_body_bytes=262144,
        max_response_bytes=10485760,
    )


def test_every_variable_is_read_from_the_environment() -> None:
    env = {
        "LOG_LEVEL": "DEBUG",
        "SERVICE_NAME": "billing",
        "DATABASE_URL": "sqlite:///tmp/a.sqlite3",
        "REDIS_URL": "rediss://cache.internal:6380/2",
        "RECOVERY_REDIS_PREFIX": "bill:",
        "PRIMARY_API_URL": "https://a.example.com",
        "SECONDARY_API_URL": "https://b.example.com",
        "FALLBACK_API_URL": "https://c.example.com",
        "API_TIMEOUT": "1500",
        "CIRCUIT_BREAKER_THRESHOLD": "7",
        "CIRCUIT_BREAKER_TIMEOUT": "2500",
        "CIRCUIT_BREAKER_RESET_TIMEOUT": "45000",
        "MAX_RETRIES": " 6 ",
        "RETRY_DELAY": "0",
        "RETRY_BACKOFF_FACTOR": "1.5",
        "RETRY_MAX_DELAY": "9000",
        "DLQ_ENABLED": "no",
        "DLQ_MAX_RETRIES": "2",
        "DLQ_RETRY_DELAY": "1000",
        "SENTRY_DSN": "https://key@sentry.example.com/4",
        "METRICS_ENABLED": "0",
        "HEALTH_CHECK_INTERVAL": "10000",
        "HEALTH_CHECK_TIMEOUT": "900",
        "RATE_LIMIT_WINDOW": "1000",
        "RATE_LIMIT_MAX_REQUESTS": "9",
        "ENABLE_CIRCUIT_BREAKER": "False",
        "ENABLE_GRACEFUL_DEGRADATION": "YES",
        "ENABLE_AUTO_RECOVERY": "1",
        "RECOVERY_INTEGRATIONS": "/etc/recovery/integrations.yaml",
        "REDIS_VISIBILITY_TIMEOUT": "120",
        "MAX_DEFER_WINDOW": "60000",
        "POISON_MAX_DELIVERIES": "4",
        "IDEMPOTENCY_TTL": "3600000",
        "AUDIT_SPOOL_MAX_ENTRIES": "5000",
    }
    s = load_settings(env)
    assert (s.log_level, s.service_name, s.redis_key_prefix) == ("debug", "billing", "bill:")
    assert s.database_url == "sqlite:///tmp/a.sqlite3"
    assert s.redis_url == "rediss://cache.internal:6380/2"
    assert (s.primary_api_url, s.secondary_api_url, s.fallback_api_url) == (
        "https://a.example.com", "https://b.example.com", "https://c.example.com",
    )
    assert (s.api_timeout_ms, s.circuit_breaker_threshold) == (1500, 7)
    assert (s.circuit_breaker_timeout_ms, s.circuit_breaker_reset_timeout_ms) == (2500, 45000)
    assert (s.max_retries, s.retry_delay_ms, s.retry_max_delay_ms) == (6, 0, 9000)
    assert s.retry_backoff_factor == 1.5
    assert (s.dlq_enabled, s.dlq_max_retries, s.dlq_retry_delay_ms) == (False, 2, 1000)
    assert s.sentry_dsn == "https://key@sentry.example.com/4"
    assert s.metrics_enabled is False
    assert (s.health_check_interval_ms, s.health_check_timeout_ms) == (10000, 900)
    assert (s.rate_limit_window_ms, s.rate_limit_max_requests) == (1000, 9)
    assert (s.enable_circuit_breaker, s.enable_graceful_degradation) == (False, True)
    assert s.enable_auto_recovery is True
    assert s.integrations_file == "/etc/recovery/integrations.yaml"
    assert (s.visibility_timeout_s, s.max_defer_ms) == (120, 60000)
    assert s.poison_max_deliveries == 4
    assert (s.idempotency_ttl_ms, s.audit_spool_max_entries) == (3_600_000, 5000)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAX_RETRIES": "abc"}, "MAX_RETRIES must be a whole number, got 'abc'."),
        ({"MAX_RETRIES": "2.5"}, "MAX_RETRIES must be a whole number, got '2.5'."),
        ({"MAX_RETRIES": ""}, "MAX_RETRIES must be a whole number, got ''."),
        ({"MAX_RETRIES": "0"}, "MAX_RETRIES must be at least 1, got '0'."),
        ({"CIRCUIT_BREAKER_THRESHOLD": "-3"},
         "CIRCUIT_BREAKER_THRESHOLD must be at least 1, got '-3'."),
        ({"RATE_LIMIT_MAX_REQUESTS": "1000001"},
         "RATE_LIMIT_MAX_REQUESTS must be at most 1000000, got '1000001'; "
         "a value this large is almost certainly a mistake."),
        ({"API_TIMEOUT": "0"}, "API_TIMEOUT must be at least 1 ms, got '0'."),
        ({"RETRY_DELAY": "-1"}, "RETRY_DELAY must be at least 0 ms, got '-1'."),
        ({"HEALTH_CHECK_INTERVAL": "604800001"},
         "HEALTH_CHECK_INTERVAL must be at most 604800000 ms (7 days), got '604800001'; "
         "a value this large is almost certainly a mistake."),
        ({"DLQ_RETRY_DELAY": "9" * 30},
         f"DLQ_RETRY_DELAY must be at most 604800000 ms (7 days), got '{'9' * 30}'; "
         "a value this large is almost certainly a mistake."),
        ({"REDIS_VISIBILITY_TIMEOUT": "0"},
         "REDIS_VISIBILITY_TIMEOUT must be at least 1 s, got '0'."),
        ({"IDEMPOTENCY_TTL": "1000"}, "IDEMPOTENCY_TTL must be at least 60000 ms, got '1000'."),
        ({"IDEMPOTENCY_TTL": "604800001"},
         "IDEMPOTENCY_TTL must be at most 604800000 ms (7 days), got '604800001'; "
         "a value this large is almost certainly a mistake."),
        ({"IDEMPOTENCY_TTL": "1d"}, "IDEMPOTENCY_TTL must be a whole number, got '1d'."),
        ({"AUDIT_SPOOL_MAX_ENTRIES": "10"},
         "AUDIT_SPOOL_MAX_ENTRIES must be at least 1000, got '10'."),
        ({"AUDIT_SPOOL_MAX_ENTRIES": "100000001"},
         "AUDIT_SPOOL_MAX_ENTRIES must be at most 100000000, got '100000001'; "
         "a value this large is almost certainly a mistake."),
        ({"RETRY_BACKOFF_FACTOR": "fast"},
         "RETRY_BACKOFF_FACTOR must be a number such as 2 or 1.5, got 'fast'."),
        ({"RETRY_BACKOFF_FACTOR": "nan"},
         "RETRY_BACKOFF_FACTOR must be a number such as 2 or 1.5, got 'nan'."),
        ({"RETRY_BACKOFF_FACTOR": "0.9"},
         "RETRY_BACKOFF_FACTOR must be at least 1 (1 keeps every delay the same), got '0.9'."),
        ({"RETRY_BACKOFF_FACTOR": "100.5"},
         "RETRY_BACKOFF_FACTOR must be at most 100, got '100.5'; "
         "a factor this large is almost certainly a mistake."),
        ({"DLQ_ENABLED": "maybe"},
         "DLQ_ENABLED must be true or false (1/0 and yes/no also work), got 'maybe'."),
        ({"METRICS_ENABLED": ""},
         "METRICS_ENABLED must be true or false (1/0 and yes/no also work), got ''."),
        ({"LOG_LEVEL": "verbose"},
         "LOG_LEVEL must be one of debug, info, warning, error, critical, got 'verbose'."),
        ({"SERVICE_NAME": "  "}, "SERVICE_NAME must not be empty; unset it to use 'api-recovery'."),
        ({"PRIMARY_API_URL": "ftp://files.example.com"},
         "PRIMARY_API_URL must be an http:// or https:// URL with a host, "
         "e.g. https://api.example.com, got 'ftp://files.example.com'."),
        ({"SECONDARY_API_URL": "https://"},
         "SECONDARY_API_URL must be an http:// or https:// URL with a host, "
         "e.g. https://api.example.com, got 'https://'."),
        ({"FALLBACK_API_URL": "http://[::1"},
         "FALLBACK_API_URL must be an http:// or https:// URL with a host, "
         "e.g. https://api.example.com, got 'http://[::1'."),
        ({"SENTRY_DSN": "http://host:99999/1"},
         "SENTRY_DSN must be an http:// or https:// URL with a host, "
         "e.g. https://api.example.com, got 'http://host:99999/1'."),
        ({"DATABASE_URL": "mysql://app:hunter2@db/app"},
         "DATABASE_URL must be a postgresql://, postgresql+psycopg:// or sqlite:///path URL, "
         "got 'mysql://app:***@db/app'."),
        ({"DATABASE_URL": "sqlite:///"},
         "DATABASE_URL must be a postgresql://, postgresql+psycopg:// or sqlite:///path URL, "
         "got 'sqlite:///'."),
        ({"REDIS_URL": "http://cache"},
         "REDIS_URL must be a redis://host:port/db, rediss://, unix://, redis+cluster:// or "
         "redis+sentinel:// URL, got 'http://cache'."),
        ({"RECOVERY_REDIS_PREFIX": "my prefix:"},
         "RECOVERY_REDIS_PREFIX must be 1 to 64 characters without spaces, such as 'recovery:', "
         "got 'my prefix:'."),
    ],
)
def test_bad_values_are_refused_with_a_sentence(env: dict[str, str], message: str) -> None:
    assert error_for(**env) == message


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RETRY_AFTER_MAX": "soon"}, "RETRY_AFTER_MAX must be a whole number, got 'soon'."),
        ({"RETRY_AFTER_MAX": "-1"}, "RETRY_AFTER_MAX must be at least 0 ms, got '-1'."),
        ({"RETRY_AFTER_MAX": "604800001"}, "RETRY_AFTER_MAX must be at most 604800000 ms "
         "(7 days), got '604800001'; a value this large is almost certainly a mistake."),
        ({"CACHE_MAX_BODY_BYTES": "1.5"}, "CACHE_MAX_BODY_BYTES must be a whole number, "
         "got '1.5'."),
        ({"CACHE_MAX_BODY_BYTES": "-1"}, "CACHE_MAX_BODY_BYTES must be at least 0 bytes, "
         "got '-1'."),
        ({"MAX_RESPONSE_BYTES": "0"}, "MAX_RESPONSE_BYTES must be at least 1 bytes, got '0'."),
        ({"MAX_RESPONSE_BYTES": "2000000000"}, "MAX_RESPONSE_BYTES must be at most 1073741824 "
         "bytes, got '2000000000'; a value this large is almost certainly a mistake."),
    ],
)
def test_outbound_limits_are_validated(env: dict[str, str], message: str) -> None:
    assert error_for(**env) == message


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HEALTH_CHECK_TRIES": "two"}, "HEALTH_CHECK_TRIES must be a whole number, got 'two'."),
        ({"HEALTH_CHECK_TRIES": "0"}, "HEALTH_CHECK_TRIES must be at least 1, got '0'."),
        ({"HEALTH_CHECK_TRIES": "11"}, "HEALTH_CHECK_TRIES must be at most 10, got '11'; a "
         "value this large is almost certainly a mistake."),
        ({"ALERT_WEBHOOK_TRIES": "21"}, "ALERT_WEBHOOK_TRIES must be at most 20, got '21'; a "
         "value this large is almost certainly a mistake."),
        ({"ALERT_WEBHOOK_URL": "ftp://hooks.example.com/?token=s3cr3t"},
         "ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host, such as "
         "https://hooks.example.com/alerts, got 'ftp://hooks.example.com/?...'."),
        ({"BEAT_LOCK_TTL": "2"}, "BEAT_LOCK_TTL must be at least 3, got '2'."),
        ({"BEAT_LOCK_TTL": "1h"}, "BEAT_LOCK_TTL must be a whole number, got '1h'."),
        ({"SERVE_PORT": "65536"}, "SERVE_PORT must be at most 65535, got '65536'; a value "
         "this large is almost certainly a mistake."),
        ({"SERVE_PORT": "-1"}, "SERVE_PORT must be at least 0, got '-1'."),
        ({"SERVE_HOST": "  "}, "SERVE_HOST must not be empty; unset it to use '127.0.0.1'."),
    ],
)
def test_ops_settings_are_validated_at_start(env: dict[str, str], message: str) -> None:
    assert error_for(**env) == message


def test_ops_settings_are_read_once_with_the_others() -> None:
    settings = load_settings({"HEALTH_CHECK_TRIES": "4", "ALERT_WEBHOOK_URL":
                              "https://hooks.example.com/a", "ALERT_WEBHOOK_TRIES": "7",
                              "BEAT_LOCK_TTL": "30", "SENTRY_ENVIRONMENT": "staging",
                              "SERVE_HOST": "0.0.0.0", "SERVE_PORT": "0"})
    assert (settings.health_check_tries, settings.alert_webhook_url,
            settings.alert_webhook_tries, settings.beat_lock_ttl_s,
            settings.sentry_environment, settings.serve_host, settings.serve_port) == (
        4, "https://hooks.example.com/a", 7, 30, "staging", "0.0.0.0", 0)


def test_retry_after_max_follows_the_defer_window_unless_set() -> None:
    assert load_settings({"MAX_DEFER_WINDOW": "90000"}).retry_after_max_ms == 90000
    assert load_settings({"MAX_DEFER_WINDOW": "90000",
                          "RETRY_AFTER_MAX": "5000"}).retry_after_max_ms == 5000
    assert load_settings({"RETRY_AFTER_MAX": "0"}).retry_after_max_ms == 0
    limits = load_settings({"CACHE_MAX_BODY_BYTES": "0", "MAX_RESPONSE_BYTES": "4096"})
    assert (limits.cache_max_body_bytes, limits.max_response_bytes) == (0, 4096)


def test_settings_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="MAX_RETRIES"):
        load_settings({"MAX_RETRIES": "x"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("Yes", True), (" yes ", True),
     ("false", False), ("False", False), ("0", False), ("NO", False)],
)
def test_booleans_accept_the_usual_spellings(text: str, expected: bool) -> None:
    assert load_settings({"DLQ_ENABLED": text}).dlq_enabled is expected


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres@127.0.0.1:5432/postgres", "postgresql+psycopg://u@h/db",
     "sqlite:///relative.sqlite3", "sqlite:////abs/path.sqlite3"],
)
def test_accepted_database_urls(url: str) -> None:
    assert load_settings({"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/15", "rediss://:secret@cache:6380/0", "unix:///run/r.sock"]
)
def test_accepted_redis_urls(url: str) -> None:
    assert load_settings({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    "name", ["SECONDARY_API_URL", "FALLBACK_API_URL", "SENTRY_DSN", "RECOVERY_INTEGRATIONS"]
)
def test_empty_optional_variables_mean_unset(name: str) -> None:
    settings = load_settings({name: "  "})
    field = {"SENTRY_DSN": "sentry_dsn", "RECOVERY_INTEGRATIONS": "integrations_file"}.get(
        name, name.lower()
    )
    assert getattr(settings, field) is None


@pytest.mark.parametrize(
    "name", ["RETRY_MAX_DELAY", "CIRCUIT_BREAKER_RESET_TIMEOUT", "RATE_LIMIT_WINDOW"]
)
def test_a_countdown_must_stay_below_the_visibility_timeout(name: str) -> None:
    message = error_for(**{name: "120000", "REDIS_VISIBILITY_TIMEOUT": "120"})
    assert message == (
        f"{name} is 120000 ms (120 s), which is not below REDIS_VISIBILITY_TIMEOUT (120 s): "
        "Redis would redeliver a job waiting that long and it would run twice. "
        f"Lower {name} or raise REDIS_VISIBILITY_TIMEOUT to at least 121 seconds."
    )


def test_a_countdown_just_below_the_visibility_timeout_is_fine() -> None:
    settings = load_settings({"RETRY_MAX_DELAY": "119999", "REDIS_VISIBILITY_TIMEOUT": "120",
                              "RATE_LIMIT_WINDOW": "1000", "CIRCUIT_BREAKER_RESET_TIMEOUT": "1"})
    assert settings.retry_max_delay_ms == 119999


def test_dlq_retry_delay_is_not_a_countdown() -> None:
    settings = load_settings({"DLQ_RETRY_DELAY": "7200000", "REDIS_VISIBILITY_TIMEOUT": "3600"})
    assert settings.dlq_retry_delay_ms == 7200000


def test_get_settings_is_cached_until_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_NAME", "first")
    reset_settings()
    try:
        first = get_settings()
        monkeypatch.setenv("SERVICE_NAME", "second")
        assert get_settings() is first
        reset_settings()
        assert get_settings().service_name == "second"
    finally:
        reset_settings()
