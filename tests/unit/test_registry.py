"""The integration registry: the primary-api seed, the YAML file, and every kind of error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from recovery.config.loader import get_registry, load_registry, reset_registry
from recovery.config.registry import (
    BreakerConfig,
    FallbackConfig,
    HealthCheckConfig,
    OAuthConfig,
    RateLimitConfig,
    Registry,
    RegistryError,
    RetryConfig,
    UnknownIntegrationError,
)
from recovery.config.settings import SettingsError, load_settings, reset_settings
from recovery.state.budget import RetryBudgetConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "integrations.yaml"
MINIMAL = "integrations:\n  - id: shop\n    base_url: https://shop.example.com\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "integrations.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def load(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, **settings_env: str
) -> Registry:
    path = write(tmp_path, text)
    settings = load_settings({"RECOVERY_INTEGRATIONS": path, **settings_env})
    return load_registry(settings, env or {})


def error_for(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(RegistryError) as caught:
        load(tmp_path, text, env)
    prefix = f"{tmp_path / 'integrations.yaml'}: "
    message = str(caught.value)
    assert message.startswith(prefix)
    return message[len(prefix):]


def entry(extra: str) -> str:
    """An integration list with one entry `shop` plus the given (already indented) YAML."""
    return MINIMAL + textwrap.indent(textwrap.dedent(extra), "    ")


# --- the seed -----------------------------------------------------------------------------------


def test_without_a_file_the_registry_is_primary_api_from_the_environment() -> None:
    settings = load_settings({
        "PRIMARY_API_URL": "https://a.example.com", "SECONDARY_API_URL": "https://b.example.com",
        "FALLBACK_API_URL": "https://c.example.com", "API_TIMEOUT": "1234",
        "MAX_RETRIES": "5", "RETRY_DELAY": "200", "RETRY_BACKOFF_FACTOR": "1.5",
        "RETRY_MAX_DELAY": "7000", "CIRCUIT_BREAKER_THRESHOLD": "9",
        "CIRCUIT_BREAKER_RESET_TIMEOUT": "8000", "CIRCUIT_BREAKER_TIMEOUT": "3000",
        "ENABLE_CIRCUIT_BREAKER": "false", "HEALTH_CHECK_INTERVAL": "11000",
        "HEALTH_CHECK_TIMEOUT": "700", "RATE_LIMIT_WINDOW": "2000", "RATE_LIMIT_MAX_REQUESTS": "4",
    })
    registry = load_registry(settings, {})
    assert registry.ids() == ["primary-api"]
    assert registry.source == "environment"
    api = registry.get("primary-api")
    assert (api.name, api.timeout_ms) == ("primary-api", 1234)
    assert api.base_url == "https://a.example.com"
    assert api.retry == RetryConfig(5, 200, 1.5, 7000, 0.2)
    assert api.circuit_breaker == BreakerConfig(
        enabled=False, threshold=9, reset_timeout_ms=8000, call_timeout_ms=3000
    )
    assert api.circuit_breaker.reset_backoff_factor == 2.0
    assert api.circuit_breaker.max_reset_timeout_ms is None
    assert api.circuit_breaker.reset_cap_ms == 32000
    assert api.fallbacks == (
        FallbackConfig("api", 1, base_url="https://b.example.com"),
        FallbackConfig("cache", 2),
        FallbackConfig("api", 3, base_url="https://c.example.com"),
        FallbackConfig("degraded", 4),
    )
    assert api.health_check == HealthCheckConfig("/health", 11000, 700)
    assert api.rate_limit == RateLimitConfig(2000, 4)
    assert dict(api.headers) == {}
    assert api.oauth is None


def test_the_seed_leaves_out_api_fallbacks_that_are_not_configured() -> None:
    api = load_registry(load_settings({}), {}).get("primary-api")
    assert [(f.type, f.priority) for f in api.fallbacks] == [("cache", 2), ("degraded", 4)]


# --- the registry object ------------------------------------------------------------------------


def test_unknown_integration_names_the_known_ones() -> None:
    registry = load_registry(load_settings({}), {})
    with pytest.raises(UnknownIntegrationError) as caught:
        registry.get("payments")
    assert str(caught.value) == "Unknown integration 'payments'. Known integrations: primary-api."
    assert isinstance(caught.value, KeyError)


def test_registry_iterates_in_file_order(tmp_path: Path) -> None:
    registry = load(tmp_path, MINIMAL + "  - id: a\n    base_url: http://a.example.com\n")
    assert registry.ids() == ["shop", "a"]
    assert [i.id for i in registry] == ["shop", "a"]
    assert len(registry) == 2
    assert "a" in registry
    assert "b" not in registry


def test_get_registry_is_cached_until_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOVERY_INTEGRATIONS", write(tmp_path, MINIMAL))
    reset_settings()
    reset_registry()
    try:
        first = get_registry()
        assert first.ids() == ["shop"]
        assert get_registry() is first
        reset_registry()
        assert get_registry() is not first
    finally:
        reset_settings()
        reset_registry()


# --- the file: happy paths ----------------------------------------------------------------------


def test_the_example_file_loads() -> None:
    settings = load_settings({"RECOVERY_INTEGRATIONS": str(EXAMPLE)})
    env = {"PAYMENTS_API_KEY": "pk-123", "CRM_CLIENT_SECRET": "s3cret"}
    registry = load_registry(settings, env)
    assert registry.ids() == ["payments", "crm"]
    payments = registry.get("payments")
    assert payments.headers["X-Api-Key"] == "pk-123"
    assert [f.type for f in payments.fallbacks] == ["api", "cache", "degraded"]
    assert payments.circuit_breaker.failure_rate == 0.5
    assert payments.circuit_breaker.reset_backoff_factor == 2.0
    assert payments.circuit_breaker.reset_cap_ms == 120000
    crm = registry.get("crm")
    assert crm.oauth == OAuthConfig(
        "https://auth.example.com/oauth/token", "recovery-service", "CRM_CLIENT_SECRET",
        "contacts.read",
    )
    assert crm.fallbacks[0].value == {"contacts": [], "complete": False}


def test_missing_keys_take_the_environment_defaults(tmp_path: Path) -> None:
    registry = load(tmp_path, MINIMAL, MAX_RETRIES="6", API_TIMEOUT="999",
                    RATE_LIMIT_MAX_REQUESTS="3", CIRCUIT_BREAKER_THRESHOLD="2")
    shop = registry.get("shop")
    assert (shop.name, shop.timeout_ms) == ("shop", 999)
    assert shop.retry == RetryConfig(6, 1000, 2.0, 30000, 0.2)
    assert shop.circuit_breaker == BreakerConfig(True, 2, 30000, 60000)
    assert (shop.circuit_breaker.reset_backoff_factor, shop.circuit_breaker.reset_cap_ms) == (
        2.0, 120000)
    assert shop.rate_limit == RateLimitConfig(60000, 3)
    assert shop.fallbacks == ()
    assert shop.health_check is None
    assert shop.oauth is None


def test_fallbacks_are_sorted_by_priority_and_default_to_their_position(tmp_path: Path) -> None:
    registry = load(tmp_path, entry("""
        fallbacks:
          - {type: degraded, priority: 9, message: later}
          - {type: cache}
          - {type: api, priority: 1, base_url: "http://backup.example.com"}
    """))
    assert registry.get("shop").fallbacks == (
        FallbackConfig("api", 1, base_url="http://backup.example.com"),
        FallbackConfig("cache", 2),
        FallbackConfig("degraded", 9, message="later"),
    )


@pytest.mark.parametrize(("text", "expected"), [("true", 0.2), ("false", 0.0), ("0.5", 0.5),
                                                 ("0", 0.0), ("1", 1.0)])
def test_jitter_is_a_fraction_or_a_boolean(tmp_path: Path, text: str, expected: float) -> None:
    registry = load(tmp_path, entry(f"retry: {{jitter: {text}}}"))
    assert registry.get("shop").retry.jitter == expected


def test_headers_resolve_every_reference(tmp_path: Path) -> None:
    registry = load(tmp_path, entry("""
        headers:
          Authorization: "Bearer ${TOKEN}"
          X-Trace: "${A}-${B}-$plain"
    """), {"TOKEN": "t0k", "A": "1", "B": ""})
    assert dict(registry.get("shop").headers) == {
        "Authorization": "Bearer t0k", "X-Trace": "1--$plain",
    }


def test_fallback_credentials_and_cache_keys(tmp_path: Path) -> None:
    registry = load(tmp_path, entry("""
        headers: {X-Api-Key: primary}
        fallbacks:
          - type: api
            base_url: "http://backup.example.com"
            headers: {X-Backup-Key: "${BACKUP_KEY}"}
            oauth: {token_url: "https://auth.example.com/t", client_id: b,
                    client_secret_env: BACKUP_SECRET}
          - {type: cache, methods: [get, POST, GET], vary: [X-User, x-user, X-Tenant],
             max_body_bytes: 1000, ttl_ms: 5000}
          - {type: degraded}
    """), {"BACKUP_KEY": "bk", "BACKUP_SECRET": "s"})
    shop = registry.get("shop")
    api, cache, degraded = shop.fallbacks
    assert dict(api.headers) == {"X-Backup-Key": "bk"}
    assert api.oauth == OAuthConfig("https://auth.example.com/t", "b", "BACKUP_SECRET")
    assert (cache.methods, cache.vary) == (("GET", "POST"), ("x-user", "x-tenant"))
    assert (cache.max_body_bytes, cache.ttl_ms) == (1000, 5000)
    assert dict(degraded.headers) == {} and degraded.oauth is None
    assert (shop.max_response_bytes, shop.deadline_ms) == (10 * 1024 * 1024, None)


def test_size_limits_default_to_the_settings(tmp_path: Path) -> None:
    registry = load(tmp_path, entry("""
        fallbacks: [{type: cache}]
        deadline_ms: 2500
    """), CACHE_MAX_BODY_BYTES="100", MAX_RESPONSE_BYTES="5000")
    shop = registry.get("shop")
    assert (shop.fallbacks[0].max_body_bytes, shop.fallbacks[0].methods) == (100, ("GET", "HEAD"))
    assert (shop.max_response_bytes, shop.deadline_ms) == (5000, 2500)
    seed = load_registry(load_settings({"CACHE_MAX_BODY_BYTES": "7", "MAX_RESPONSE_BYTES": "9"}),
                         {}).get("primary-api")
    assert seed.max_response_bytes == 9
    assert [f.max_body_bytes for f in seed.fallbacks if f.type == "cache"] == [7]


def test_retry_budget_defaults_and_overrides(tmp_path: Path) -> None:
    text = MINIMAL + (
        "  - id: crm\n    base_url: https://crm.example.com\n"
        "    retry_budget: {ratio: 0.5, floor: 0, window_ms: 2000}\n"
        "  - id: mail\n    base_url: https://mail.example.com\n"
        "    retry_budget: {enabled: false}\n"
    )
    registry = load(tmp_path, text)
    assert registry.get("shop").retry_budget == RetryBudgetConfig()
    assert registry.get("crm").retry_budget == RetryBudgetConfig(ratio=0.5, floor=0,
                                                                 window_ms=2000)
    assert registry.get("mail").retry_budget.enabled is False


def test_health_check_with_an_empty_mapping_uses_defaults(tmp_path: Path) -> None:
    registry = load(tmp_path, entry("health_check: {}"), HEALTH_CHECK_TIMEOUT="321")
    assert registry.get("shop").health_check == HealthCheckConfig("/health", 30000, 321, 3)


# --- the file: errors ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(RegistryError) as caught:
        load_registry(load_settings({"RECOVERY_INTEGRATIONS": str(path)}), {})
    assert str(caught.value) == (
        f"{path}: the integrations file named by RECOVERY_INTEGRATIONS does not exist; create "
        "it, or unset RECOVERY_INTEGRATIONS to use primary-api from the environment."
    )


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="the file cannot be read"):
        load_registry(load_settings({"RECOVERY_INTEGRATIONS": str(tmp_path)}), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("integrations: [\n", "not valid YAML: expected the node content, but found "
                              "'<stream end>' at line 2, column 1; fix the syntax."),
        ("integrations:\n  - id: a\n    id: b\n", "not valid YAML: key 'id' appears twice in one "
                                                  "mapping at line 3, column 5; fix the syntax."),
        ("- id: a\n", "the top level must be a mapping with an 'integrations' list, got a list."),
        ("", "the top level must be a mapping with an 'integrations' list, got nothing (null)."),
        ("services: []\n", "the top level must be a mapping with an 'integrations' list, "
                           "got a mapping."),
        (MINIMAL + "extra: 1\n",
         "unknown top-level key 'extra' (known keys: integrations, workflows)."),
        ("integrations: []\n", "'integrations' must be a non-empty list of integrations, "
                               "got a list."),
        ("integrations: {id: a}\n", "'integrations' must be a non-empty list of integrations, "
                                    "got a mapping."),
        ("integrations: [shop]\n", "integration #1 must be a mapping with keys such as id and "
                                   "base_url, got 'shop'."),
        ("integrations:\n  - base_url: http://x.example.com\n",
         "integration #1: key 'id' is missing; give every integration an id such as 'payments'."),
        ("integrations:\n  - id: Shop\n", "integration #1: key 'id' must be 1 to 63 lowercase "
         "letters, digits, '-' or '_', starting with a letter or digit, got 'Shop'."),
        ("integrations:\n  - id: 7\n", "integration #1: key 'id' must be 1 to 63 lowercase "
         "letters, digits, '-' or '_', starting with a letter or digit, got 7."),
        (MINIMAL + MINIMAL.replace("integrations:\n", ""),
         "integration 'shop' is defined twice (#1 and #2); give each integration its own id."),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, message: str) -> None:
    assert error_for(tmp_path, text) == message


INTEGRATION_KEYS = ("audit, base_url, circuit_breaker, deadline_ms, fallbacks, headers, "
                    "health_check, id, max_response_bytes, name, oauth, rate_limit, retry, "
                    "retry_budget, strategies, timeout_ms")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("retyr: {}", f"unknown key 'retyr' (known keys: {INTEGRATION_KEYS})."),
        ("retry: {max_attemps: 3}", "unknown key 'retry.max_attemps' (known keys: backoff_factor, "
         "initial_delay_ms, jitter, max_attempts, max_delay_ms)."),
        ("circuit_breaker: {treshold: 3}", "unknown key 'circuit_breaker.treshold' (known keys: "
         "call_timeout_ms, enabled, failure_rate, half_open_max_calls, max_reset_timeout_ms, "
         "minimum_calls, reset_backoff_factor, reset_timeout_ms, threshold, window_ms)."),
        ("health_check: {path: /x}", "unknown key 'health_check.path' (known keys: endpoint, "
         "failure_threshold, interval_ms, timeout_ms)."),
        ("rate_limit: {max: 3}", "unknown key 'rate_limit.max' (known keys: max_requests, "
         "window_ms)."),
        ("oauth: {url: x}", "unknown key 'oauth.url' (known keys: client_id, client_secret_env, "
         "scope, token_url)."),
        ("fallbacks: [{type: cache, value: 1}]", "unknown key 'fallbacks[1].value' for a fallback "
         "of type 'cache' (known keys: max_body_bytes, methods, priority, ttl_ms, type, vary)."),
        ("fallbacks: [{type: api, base_url: 'http://b.example.com', ttl_ms: 5}]",
         "unknown key 'fallbacks[1].ttl_ms' for a fallback of type 'api' (known keys: base_url, "
         "headers, oauth, priority, type)."),
        ("fallbacks: [{type: cache, headers: {X-Key: k}}]", "unknown key 'fallbacks[1].headers' "
         "for a fallback of type 'cache' (known keys: max_body_bytes, methods, priority, ttl_ms, "
         "type, vary)."),
        ("fallbacks: [{type: api, base_url: 'http://b.example.com', oauth: {url: x}}]",
         "unknown key 'fallbacks[1].oauth.url' (known keys: client_id, client_secret_env, scope, "
         "token_url)."),
    ],
)
def test_unknown_keys_at_every_level(tmp_path: Path, extra: str, message: str) -> None:
    assert error_for(tmp_path, entry(extra)) == f"integration 'shop': {message}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("timeout_ms: fast", "key 'timeout_ms' must be a whole number ms, got 'fast'."),
        ("timeout_ms: 1.5", "key 'timeout_ms' must be a whole number ms, got 1.5."),
        ("timeout_ms: true", "key 'timeout_ms' must be a whole number ms, got true."),
        ("timeout_ms: 0", "key 'timeout_ms' must be from 1 to 604800000 ms, got 0."),
        ("name: 5", "key 'name' must be a non-empty string, got 5."),
        ("retry: 3", "key 'retry' must be a mapping, got 3."),
        ("retry: {max_attempts: 0}", "key 'retry.max_attempts' must be from 1 to 1000000, got 0."),
        ("retry: {initial_delay_ms: -1}",
         "key 'retry.initial_delay_ms' must be from 0 to 604800000 ms, got -1."),
        ("retry: {backoff_factor: 0.5}", "key 'retry.backoff_factor' must be from 1 to 100, "
         "got 0.5."),
        ("retry: {backoff_factor: .nan}", "key 'retry.backoff_factor' must be from 1 to 100, "
         "got nan."),
        ("retry: {backoff_factor: '2'}", "key 'retry.backoff_factor' must be a number, got '2'."),
        ("retry: {jitter: 1.5}", "key 'retry.jitter' must be from 0 to 1, got 1.5."),
        ("retry: {jitter: lots}", "key 'retry.jitter' must be a number, got 'lots'."),
        ("circuit_breaker: {enabled: 'yes'}",
         "key 'circuit_breaker.enabled' must be true or false, got 'yes'."),
        ("circuit_breaker: {failure_rate: 0}",
         "key 'circuit_breaker.failure_rate' must be from 0.01 to 1, got 0."),
        ("circuit_breaker: {half_open_max_calls: 0}",
         "key 'circuit_breaker.half_open_max_calls' must be from 1 to 1000000, got 0."),
        ("circuit_breaker: {reset_backoff_factor: 0.5}",
         "key 'circuit_breaker.reset_backoff_factor' must be from 1 to 100, got 0.5."),
        ("circuit_breaker: {reset_backoff_factor: double}",
         "key 'circuit_breaker.reset_backoff_factor' must be a number, got 'double'."),
        ("circuit_breaker: {max_reset_timeout_ms: 1.5}",
         "key 'circuit_breaker.max_reset_timeout_ms' must be a whole number ms, got 1.5."),
        ("circuit_breaker: {reset_timeout_ms: 5000, max_reset_timeout_ms: 4999}",
         "key 'circuit_breaker.max_reset_timeout_ms' must be at least reset_timeout_ms "
         "(5000 ms), got 4999; raise it or lower reset_timeout_ms."),
        ("fallbacks: {type: cache}", "key 'fallbacks' must be a list, got a mapping."),
        ("fallbacks: [cache]", "key 'fallbacks[1]' must be a mapping, got 'cache'."),
        ("fallbacks: [{type: queue}]", "key 'fallbacks[1].type' must be one of api, cache, "
         "default, degraded, got 'queue'."),
        ("fallbacks: [{priority: 1}]", "key 'fallbacks[1].type' must be one of api, cache, "
         "default, degraded, got nothing (null)."),
        ("fallbacks: [{type: api}]", "key 'fallbacks[1].base_url' is missing."),
        ("fallbacks: [{type: cache, priority: 0}]",
         "key 'fallbacks[1].priority' must be from 1 to 1000000, got 0."),
        ("fallbacks: [{type: degraded, message: ''}]",
         "key 'fallbacks[1].message' must be a non-empty string, got ''."),
        ("fallbacks: [{type: cache, methods: GET}]",
         "key 'fallbacks[1].methods' must be a list of names, got 'GET'."),
        ("fallbacks: [{type: cache, methods: [GET, BREW]}]", "key 'fallbacks[1].methods' names "
         "'BREW', which is not an HTTP method; use some of DELETE, GET, HEAD, OPTIONS, PATCH, "
         "POST, PUT."),
        ("fallbacks: [{type: cache, methods: []}]", "key 'fallbacks[1].methods' must name at "
         "least one method, e.g. [GET, HEAD]; remove the cache fallback to cache nothing."),
        ("fallbacks: [{type: cache, vary: [X-User, 'Bad Name']}]", "key 'fallbacks[1].vary' "
         "names 'Bad Name', which is not a valid HTTP header name."),
        ("fallbacks: [{type: cache, vary: [1]}]",
         "key 'fallbacks[1].vary' must be a list of names, got a list."),
        ("fallbacks: [{type: cache, max_body_bytes: -1}]", "key 'fallbacks[1].max_body_bytes' "
         "must be from 0 to 1073741824 bytes, got -1."),
        ("fallbacks: [{type: api, base_url: 'http://b.example.com', headers: {X-K: '${NOPE}'}}]",
         "key 'fallbacks[1].headers.X-K' refers to ${NOPE}, which is not set in the "
         "environment; set it before starting or remove the reference."),
        ("fallbacks: [{type: api, base_url: 'http://b.example.com', oauth: {token_url: "
         "'https://a.example.com/t', client_id: c, client_secret_env: UNSET}}]",
         "key 'fallbacks[1].oauth.client_secret_env' names UNSET, which is not set in the "
         "environment; set it before starting."),
        ("max_response_bytes: 0", "key 'max_response_bytes' must be from 1 to 1073741824 bytes, "
         "got 0."),
        ("max_response_bytes: 1.5", "key 'max_response_bytes' must be a whole number bytes, "
         "got 1.5."),
        ("deadline_ms: 0", "key 'deadline_ms' must be from 1 to 604800000 ms, got 0."),
        ("health_check: {endpoint: health}",
         "key 'health_check.endpoint' must be a path starting with '/', got 'health'."),
        ("rate_limit: {max_requests: 0}",
         "key 'rate_limit.max_requests' must be from 1 to 1000000, got 0."),
        ("retry_budget: {ratio: -0.1}", "key 'retry_budget.ratio' must be from 0 to 10, got -0.1."),
        ("retry_budget: {floor: 1.5}", "key 'retry_budget.floor' must be a whole number, "
         "got 1.5."),
        ("retry_budget: {window_ms: 50}",
         "key 'retry_budget.window_ms' must be from 100 to 3600000 ms, got 50."),
        ("retry_budget: {enabled: 'no'}",
         "key 'retry_budget.enabled' must be true or false, got 'no'."),
        ("retry_budget: {share: 0.2}", "unknown key 'retry_budget.share' (known keys: enabled, "
         "floor, ratio, window_ms)."),
        ("headers: [a]", "key 'headers' must be a mapping of names to strings, got a list."),
        ("headers: {X-Count: 5}", "key 'headers.X-Count' must be a string, got 5."),
        ("headers: {'Bad Name': x}", "key 'headers.Bad Name' is not a valid HTTP header name."),
        ("headers: {X-Key: '${MISSING_KEY}'}", "key 'headers.X-Key' refers to ${MISSING_KEY}, "
         "which is not set in the environment; set it before starting or remove the reference."),
        ("headers: {X-Key: '${not valid}'}", "key 'headers.X-Key' refers to ${not valid}, which "
         "is not a valid environment variable name."),
        ("headers: {X-Key: '${NEWLINE}'}", "key 'headers.X-Key' has a value containing a line "
         "break or control character, which would let it inject other headers."),
        ("headers: {X-Key: '${UNICODE}'}", "key 'headers.X-Key' has a value with characters "
         "outside visible ASCII (not shown: it may be a secret); header values may hold only "
         "visible ASCII, spaces and tabs."),
        ("headers: {X-Key: '${HUGE}'}", "key 'headers.X-Key' has a value of 8193 characters; "
         "the limit is 8192 bytes (8 KiB)."),
        ("headers: {Host: internal.corp}", "key 'headers.Host' is refused: the header 'Host' "
         "frames the message or steers the connection, which the HTTP client does itself from "
         "the base URL and the body; remove it."),
        ("headers: {Proxy-Authorization: x}", "key 'headers.Proxy-Authorization' is refused: "
         "the header 'Proxy-Authorization' is addressed to a proxy, not to the integration's "
         "API; remove it."),
        ("headers: {X-Key: a, x-key: b}", "key 'headers' is refused: the header 'x-key' is "
         "given twice (also as 'X-Key'); give it once."),
        ("health_check: {endpoint: '/health?full=1'}", "key 'health_check.endpoint' must be a "
         "path without a query string or fragment, got '/health?full=1'; the health check sends "
         "a plain GET."),
        ("health_check: {endpoint: '/health#top'}", "key 'health_check.endpoint' must be a path "
         "without a query string or fragment, got '/health#top'; the health check sends a plain "
         "GET."),
        ("health_check: {endpoint: '/..;/admin'}", "key 'health_check.endpoint' must stay below "
         "the base URL: the path '/..;/admin' was refused: it contains a '.' or '..' segment "
         "behind ';' path parameters (Tomcat, Jetty and Spring drop the parameters and step out "
         "of the base URL)."),
        ("fallbacks: [{type: api, base_url: 'https://bob:hunter2@b.example.com'}]",
         "key 'fallbacks[1].base_url' must not carry user information (user:password@), got "
         "'https://***@b.example.com'; put credentials in the integration's headers instead."),
        ("fallbacks: [{type: api, base_url: 'https://b.example.com/?key=s3cret'}]",
         "key 'fallbacks[1].base_url' must not have a query string ('?'), got "
         "'https://b.example.com/?...'; pass query parameters with each job (params) instead."),
        ("oauth: {token_url: 'https://a.example.com/t', client_id: c}",
         "key 'oauth.client_secret_env' is missing."),
        ("oauth: {token_url: 'https://a.example.com/t', client_id: c, client_secret_env: UNSET}",
         "key 'oauth.client_secret_env' names UNSET, which is not set in the environment; "
         "set it before starting."),
        ("oauth: {token_url: 'https://a.example.com/t', client_id: c, client_secret_env: a-b}",
         "key 'oauth.client_secret_env' must be an environment variable name such as "
         "PAYMENTS_CLIENT_SECRET, got 'a-b'."),
        ("oauth: {token_url: '/token', client_id: c, client_secret_env: NEWLINE}",
         "key 'oauth.token_url' must be an http:// or https:// URL with a host, "
         "e.g. https://api.example.com, got '/token'."),
    ],
)
def test_wrong_values_name_the_integration_and_key(
    tmp_path: Path, extra: str, message: str
) -> None:
    env = {"NEWLINE": "a\r\nX-Evil: 1", "UNICODE": "s3cr\u00e9t", "HUGE": "k" * 8193}
    found = error_for(tmp_path, entry(extra), env)
    assert found == f"integration 'shop': {message}"
    assert "s3cr" not in found and "hunter2" not in found and "s3cret" not in found


@pytest.mark.parametrize("url", ["ftp://shop.example.com", "shop.example.com", "https://"])
def test_bad_base_url(tmp_path: Path, url: str) -> None:
    text = f"integrations:\n  - id: shop\n    base_url: '{url}'\n"
    assert error_for(tmp_path, text) == (
        "integration 'shop': key 'base_url' must be an http:// or https:// URL with a host, "
        f"e.g. https://api.example.com, got '{url}'."
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://bob:hunter2@shop.example.com/v1",
         "must not carry user information (user:password@), got 'https://***@shop.example.com/v1'"
         "; put credentials in the integration's headers instead."),
        ("https://token@shop.example.com",
         "must not carry user information (user:password@), got 'https://***@shop.example.com'; "
         "put credentials in the integration's headers instead."),
        ("https://shop.example.com/v1?api_key=hunter2",
         "must not have a query string ('?'), got 'https://shop.example.com/v1?...'; pass query "
         "parameters with each job (params) instead."),
        ("https://shop.example.com/v1?",
         "must not have a query string ('?'), got 'https://shop.example.com/v1?...'; pass query "
         "parameters with each job (params) instead."),
        ("https://shop.example.com/v1#frag",
         "must not have a fragment ('#'), got 'https://shop.example.com/v1#frag'; remove it."),
    ],
)
def test_a_base_url_with_userinfo_query_or_fragment_is_refused_at_load(
    tmp_path: Path, url: str, message: str
) -> None:
    text = f"integrations:\n  - id: shop\n    base_url: '{url}'\n"
    found = error_for(tmp_path, text)
    assert found == f"integration 'shop': key 'base_url' {message}"
    assert "hunter2" not in found


@pytest.mark.parametrize(
    ("name", "url", "message"),
    [
        ("PRIMARY_API_URL", "https://bob:hunter2@a.example.com",
         "PRIMARY_API_URL must not carry user information (user:password@), got "
         "'https://***@a.example.com'; put credentials in the integration's headers instead."),
        ("SECONDARY_API_URL", "https://b.example.com/v1?key=hunter2",
         "SECONDARY_API_URL must not have a query string ('?'), got "
         "'https://b.example.com/v1?...'; pass query parameters with each job (params) instead."),
        ("FALLBACK_API_URL", "https://c.example.com/#x",
         "FALLBACK_API_URL must not have a fragment ('#'), got 'https://c.example.com/#x'; "
         "remove it."),
    ],
)
def test_the_seed_urls_get_the_same_check_naming_the_variable(
    name: str, url: str, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({name: url})
    assert str(caught.value) == message


def test_the_seed_accepts_a_plain_base_url_with_a_path() -> None:
    settings = load_settings({"PRIMARY_API_URL": "https://a.example.com:8443/api/v2/"})
    assert load_registry(settings, {}).get("primary-api").base_url == (
        "https://a.example.com:8443/api/v2/")


def test_a_malformed_base_url_with_a_password_does_not_show_it(tmp_path: Path) -> None:
    text = "integrations:\n  - id: shop\n    base_url: 'https://bob:hunter2@:99999/'\n"
    assert error_for(tmp_path, text) == (
        "integration 'shop': key 'base_url' must be an http:// or https:// URL with a host, "
        "e.g. https://api.example.com, got 'https://***@:99999/'.")


def test_missing_base_url(tmp_path: Path) -> None:
    assert error_for(tmp_path, "integrations:\n  - id: shop\n") == (
        "integration 'shop': key 'base_url' is missing."
    )


@pytest.mark.parametrize(
    "extra",
    ["retry: {max_delay_ms: 3600000}", "circuit_breaker: {reset_timeout_ms: 3600000}",
     "circuit_breaker: {max_reset_timeout_ms: 3600000}", "rate_limit: {window_ms: 3600000}",
     "retry_budget: {window_ms: 3600000}"],
)
def test_countdowns_must_stay_below_the_visibility_timeout(tmp_path: Path, extra: str) -> None:
    key = extra.split(":")[0] + "." + extra.split("{")[1].split(":")[0]
    assert error_for(tmp_path, entry(extra)) == (
        f"integration 'shop': key '{key}' is 3600000 ms, which is not below "
        "REDIS_VISIBILITY_TIMEOUT (3600 s): Redis would redeliver a job waiting that long and it "
        f"would run twice. Lower {key} or raise REDIS_VISIBILITY_TIMEOUT to at least 3601 seconds."
    )


def test_the_default_open_time_cap_must_stay_below_the_visibility_timeout(tmp_path: Path) -> None:
    key = "circuit_breaker.max_reset_timeout_ms"
    assert error_for(tmp_path, entry("circuit_breaker: {reset_timeout_ms: 900000}")) == (
        f"integration 'shop': key '{key}' is 3600000 ms (by default 4 x reset_timeout_ms), which "
        "is not below REDIS_VISIBILITY_TIMEOUT (3600 s): Redis would redeliver a job waiting that "
        f"long and it would run twice. Lower {key} or raise REDIS_VISIBILITY_TIMEOUT to at least "
        "3601 seconds."
    )
    fixed = entry("circuit_breaker: {reset_timeout_ms: 900000, max_reset_timeout_ms: 1800000}")
    breaker = load(tmp_path, fixed).get("shop").circuit_breaker
    assert (breaker.reset_timeout_ms, breaker.reset_cap_ms) == (900000, 1800000)


def test_open_time_backoff_keys(tmp_path: Path) -> None:
    text = entry("""
        circuit_breaker:
          reset_timeout_ms: 2000
          reset_backoff_factor: 1.5
          max_reset_timeout_ms: 2000
    """)
    breaker = load(tmp_path, text).get("shop").circuit_breaker
    assert (breaker.reset_backoff_factor, breaker.max_reset_timeout_ms) == (1.5, 2000)
    assert breaker.reset_cap_ms == 2000
    fixed = load(tmp_path, entry("circuit_breaker: {reset_backoff_factor: 1}"))
    assert fixed.get("shop").circuit_breaker.reset_backoff_factor == 1.0
