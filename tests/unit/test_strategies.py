"""Recovery strategies as configuration: the default table's numbers, layering, and every bad
`strategies:` block refused at load with the file, the integration and the key."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from recovery.config.loader import load_registry
from recovery.config.registry import FallbackConfig, Integration, RegistryError
from recovery.config.settings import load_settings
from recovery.config.strategies import CATEGORY_NAMES, StrategyBlock
from recovery.core.errors import ErrorCategory, classify
from recovery.core.strategies import DEFAULT_TABLE, resolve, strategy_for
from tests.unit.test_policy import integration as make_integration
from tests.unit.test_policy import retry_config, status

MINIMAL = "integrations:\n  - id: shop\n    base_url: https://shop.example.com\n"


def load(tmp_path: Path, extra: str) -> Integration:
    path = tmp_path / "integrations.yaml"
    path.write_text(MINIMAL + textwrap.indent(textwrap.dedent(extra), "    "), encoding="utf-8")
    settings = load_settings({"RECOVERY_INTEGRATIONS": str(path)})
    return load_registry(settings, {}).get("shop")


def error_for(tmp_path: Path, extra: str) -> str:
    with pytest.raises(RegistryError) as caught:
        load(tmp_path, extra)
    return str(caught.value).removeprefix(f"{tmp_path / 'integrations.yaml'}: ")


def default_integration() -> Integration:
    return make_integration(retry_config(jitter=0.0))


def test_the_category_names_match_the_taxonomy() -> None:
    assert tuple(category.value for category in ErrorCategory) == CATEGORY_NAMES
    assert set(DEFAULT_TABLE) == set(CATEGORY_NAMES)


def test_rate_limit_backoff_has_the_design_table_numbers() -> None:
    s = strategy_for(default_integration(), status(429))
    assert (s.name, s.stop.attempts) == ("rate-limit-backoff", 5)
    assert [s.wait(n) for n in range(1, 5)] == [5.0, 15.0, 45.0, 135.0]
    assert s.wait(8) == 600.0  # capped at 10 minutes
    assert [s.stop(n) for n in range(1, 6)] == [False] * 4 + [True]
    assert s.fallbacks == ("cache", "others")


def test_network_retry_is_three_attempts_factor_two_from_the_default_settings() -> None:
    registry = load_registry(load_settings({}), {})
    s = strategy_for(registry.get("primary-api"), classify(ConnectionRefusedError()))
    assert (s.name, s.stop.attempts, s.wait.factor) == ("network-retry", 3, 2.0)


def test_server_error_uses_the_breaker_then_the_secondary_api_first() -> None:
    fallbacks = (FallbackConfig("cache", 1), FallbackConfig("api", 2, base_url="http://b"),
                 FallbackConfig("degraded", 3))
    shop = replace(make_integration(), fallbacks=fallbacks)
    s = strategy_for(shop, status(503))
    assert s.name == "server-error-circuit" and s.counts_against_breaker(status(503))
    assert [f.type for f in s.chain(shop)] == ["api", "cache", "degraded"]
    assert [f.type for f in strategy_for(shop, status(429)).chain(shop)] == [
        "cache", "api", "degraded"]


def test_auth_token_refresh_is_two_calls_with_refresh_then_an_alert() -> None:
    s = strategy_for(default_integration(), status(401))
    assert (s.name, s.stop.attempts, s.refresh_token, s.alert) == (
        "auth-token-refresh", 2, True, True)


def test_unknown_goes_to_the_dead_letter_queue_without_fallbacks() -> None:
    shop = replace(make_integration(), fallbacks=(FallbackConfig("degraded", 1),))
    s = strategy_for(shop, classify(Exception("boom")))
    assert (s.name, s.dead_letter, s.chain(shop)) == ("dead-letter-queue", True, ())


def test_a_configured_block_overrides_the_table_key_by_key_and_a_status_wins(
        tmp_path: Path) -> None:
    shop = load(tmp_path, """\
        fallbacks: [{type: cache}, {type: degraded}]
        strategies:
          rate_limit: {initial_delay_ms: 100, fallbacks: [degraded]}
          503: {name: outage-backoff, attempts: 6, breaker: false}
          client_error: {}
          "409": {retry: true, attempts: 3}
        """)
    assert shop.strategies["rate_limit"] == StrategyBlock(initial_delay_ms=100,
                                                           fallbacks=("degraded",))
    rate = strategy_for(shop, status(429))
    assert (rate.name, rate.stop.attempts, rate.wait.factor) == ("rate-limit-backoff", 5, 3.0)
    assert rate.wait.initial_ms == 100 and [f.type for f in rate.chain(shop)] == ["degraded"]
    outage = strategy_for(shop, status(503))
    assert (outage.name, outage.stop.attempts, outage.key) == ("outage-backoff", 6, "503")
    assert not outage.counts_against_breaker(status(503))
    assert strategy_for(shop, status(502)).name == "server-error-circuit"
    conflict = strategy_for(shop, status(409))
    assert conflict.retryable(status(409)) and conflict.stop.attempts == 3
    assert resolve(shop, "client_error").name == "dead-letter-queue"


@pytest.mark.parametrize(("extra", "message"), [
    ("strategies: {ratelimit: {attempts: 2}}", "key 'strategies.ratelimit' is not an error "
     "category or HTTP error status; use one of network, authentication, rate_limit, "
     "server_error, client_error, response_too_large, transient, unknown, or a status from 400 "
     "to 599."),
    ("strategies: {302: {}}", "key 'strategies.302' is not an error category or HTTP error "
     "status; use one of network, authentication, rate_limit, server_error, client_error, "
     "response_too_large, transient, unknown, or a status from 400 to 599."),
    ("strategies: {network: {retries: 2}}", "unknown key 'strategies.network.retries' (known "
     "keys: alert, attempts, breaker, dead_letter, factor, fallbacks, initial_delay_ms, jitter, "
     "max_delay_ms, name, refresh_token, retry)."),
    ("strategies: {rate_limit: {fallbacks: [cach]}}", "key 'strategies.rate_limit.fallbacks' "
     "names 'cach', which is not a fallback type; use some of api, cache, default, degraded "
     "(and others for the rest in priority order)."),
    ("strategies: {rate_limit: {fallbacks: [cache]}}", "key 'strategies.rate_limit.fallbacks' "
     "names 'cache', but the integration has no cache fallback; add one under 'fallbacks' or "
     "remove it here."),
    ("strategies: {client_error: {fallbacks: [others]}}", "key "
     "'strategies.client_error.fallbacks' cannot name fallbacks for client errors: the request "
     "itself is wrong, and a stand-in answer would hide it; use an empty list or remove the "
     "key."),
    ("strategies: {unknown: {dead_letter: true, attempts: 3}}", "key "
     "'strategies.unknown.dead_letter' sends the job straight to the dead-letter queue, which "
     "contradicts 'attempts' in the same block; remove one."),
    ("strategies: {server_error: {refresh_token: true}}", "key "
     "'strategies.server_error.refresh_token' applies to authentication failures only "
     "(authentication, 401 or 403), not to 'server_error'."),
    ("strategies: {network: {attempts: 0}}", "key 'strategies.network.attempts' must be from 1 "
     "to 100, got 0."),
    ("strategies: {network: {factor: 0.5}}", "key 'strategies.network.factor' must be from 1 to "
     "100, got 0.5."),
    ("strategies: {network: {breaker: maybe}}", "key 'strategies.network.breaker' must be true "
     "or false, got 'maybe'."),
    ("strategies: {network: {max_delay_ms: 4000000}}", "key 'strategies.network.max_delay_ms' "
     "is 4000000 ms, which is not below REDIS_VISIBILITY_TIMEOUT (3600 s): Redis would "
     "redeliver a job waiting that long and it would run twice; lower it."),
    ("strategies: {network: {name: 'Bad Name'}}", "key 'strategies.network.name' must be 1 to "
     "40 lowercase letters, digits or '-', such as 'payments-backoff', got 'Bad Name'."),
    ("strategies: [network]", "key 'strategies' must be a mapping of error categories to "
     "strategies, got a list."),
    ("strategies: {network: 3}", "key 'strategies.network' must be a mapping, got 3."),
    ("strategies: {503: {}, '503': {}}", "key 'strategies.503' is given twice (as a number and "
     "as a string)."),
])
def test_bad_strategy_blocks_are_refused_at_load(tmp_path: Path, extra: str,
                                                 message: str) -> None:
    assert error_for(tmp_path, extra) == f"integration 'shop': {message}"
