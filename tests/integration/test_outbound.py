"""Outbound hygiene against real Redis, PostgreSQL and local upstreams: per-origin fallback
credentials, a cache keyed by the whole request, Retry-After capped, and `ratelimit` CLI."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import text
from structlog.testing import capture_logs

from recovery.cli.main import main
from recovery.core.message import JobSpec, Progress
from recovery.core.step import Step
from recovery.demo.faultserver import FaultServer
from recovery.engine.pipeline import run_job
from recovery.engine.runtime import get_runtime
from tests.integration.test_job_flow import integration

PRIMARY_KEY = "primary-key-5f1c"
FALLBACK_KEY = "fallback-key-a93e"


@pytest.fixture
def backup() -> Iterator[FaultServer]:
    server = FaultServer()
    server.start()
    yield server
    server.stop()


def job(method: str = "GET", path: str = "/acct", **fields: Any) -> JobSpec:
    ident = uuid.uuid4().hex
    return JobSpec(job_id=ident, integration="shop", method=method, path=path,
                   idempotency_key=f"k-{ident}", **fields)


def one_delivery(spec: JobSpec) -> Step:
    """One delivery of the job in this process, as a worker would run it (no Celery)."""
    return run_job(spec, Progress(), get_runtime())


def audit_rows(sql: str, **params: Any) -> list[dict[str, Any]]:
    get_runtime().audit.flush()
    with get_runtime().engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(sql), params)]


def wait_rows(sql: str, count: int = 1, timeout: float = 10.0, **params: Any
              ) -> list[dict[str, Any]]:
    """Poll until the audit trail holds `count` rows for `sql` (rows drain from the spool)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = audit_rows(sql, **params)
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {count} rows for {sql!r}, got {rows}")


# --- 4. per-origin credentials ---------------------------------------------------------------

def test_an_api_fallback_gets_only_its_own_credentials(
        configure, upstream: FaultServer, backup: FaultServer) -> None:
    """The primary's API key and OAuth token never reach the fallback's origin."""
    upstream.client_secret = "primary-secret"
    backup.client_secret = "backup-secret"
    configure([integration(
        upstream.url, retry={"max_attempts": 1},
        headers={"X-Api-Key": PRIMARY_KEY},
        oauth={"token_url": f"{upstream.url}/oauth/token", "client_id": "shop",
               "client_secret_env": "PRIMARY_SECRET"},
        fallbacks=[{"type": "api", "priority": 1, "base_url": f"{backup.url}/v2",
                    "headers": {"X-Backup-Key": "${BACKUP_KEY}"},
                    "oauth": {"token_url": f"{backup.url}/oauth/token", "client_id": "shop-b",
                              "client_secret_env": "BACKUP_SECRET"}}],
    )], PRIMARY_SECRET="primary-secret", BACKUP_SECRET="backup-secret",
        BACKUP_KEY=FALLBACK_KEY)
    upstream.set_mode("5xx")
    step = one_delivery(job(headers={"X-Team": "shop"}))
    assert (step.status, step.fallback) == ("degraded", "api")

    primary_call = next(r for r in upstream.requests() if r["path"] == "/acct")
    assert primary_call["headers"]["X-Api-Key"] == PRIMARY_KEY
    primary_token = primary_call["headers"]["Authorization"]
    served = [r for r in backup.requests() if r["path"] == "/v2/acct"]
    assert len(served) == 1
    sent = served[0]["headers"]
    assert sent["X-Backup-Key"] == FALLBACK_KEY
    assert sent["X-Team"] == "shop"  # the job's own header travels
    assert sent["Authorization"].startswith("Bearer ")
    assert sent["Authorization"] != primary_token
    everything = json.dumps(backup.requests())
    assert PRIMARY_KEY not in everything
    assert primary_token.split()[1] not in everything
    assert "X-Api-Key" not in sent


def test_a_fallback_without_headers_sends_no_credentials(
        configure, upstream: FaultServer, backup: FaultServer) -> None:
    configure([integration(upstream.url, retry={"max_attempts": 1},
                           headers={"X-Api-Key": PRIMARY_KEY,
                                    "Authorization": "Basic cHJpbWFyeQ=="},
                           fallbacks=[{"type": "api", "base_url": backup.url}])])
    upstream.set_mode("5xx")
    assert one_delivery(job()).fallback == "api"
    sent = backup.requests()[0]["headers"]
    assert "X-Api-Key" not in sent and "Authorization" not in sent
    assert PRIMARY_KEY not in json.dumps(backup.requests())


# --- 5. the cache keyed by the whole request -------------------------------------------------

def cached(configure, upstream: FaultServer, **cache: Any) -> None:
    configure([integration(upstream.url, retry={"max_attempts": 1},
                           fallbacks=[{"type": "cache", "ttl_ms": 60_000, **cache}])])


def test_one_callers_answer_is_never_served_to_another(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    cached(configure, upstream)
    alice = one_delivery(job(params={"user": "alice"}))
    assert alice.status == "succeeded"
    upstream.set_mode("5xx")
    bob = one_delivery(job(params={"user": "bob"}))
    assert bob.status == "dead" and bob.fallback is None
    again = one_delivery(job(params={"user": "alice"}))
    assert (again.status, again.fallback) == ("degraded", "cache")
    assert again.body == alice.body and again.body["path"] == "/acct?user=alice"


def test_params_order_does_not_matter_but_body_and_vary_headers_do(
        configure, upstream: FaultServer) -> None:
    cached(configure, upstream, vary=["X-User"], methods=["GET", "POST"])
    first = one_delivery(job("POST", params={"a": "1", "b": ["x", "y"]}, json={"q": 1},
                           headers={"X-User": "alice"}))
    assert first.status == "succeeded"
    upstream.set_mode("5xx")
    same = one_delivery(job("POST", params={"b": ["x", "y"], "a": "1"}, json={"q": 1},
                          headers={"x-user": "alice", "X-Other": "ignored"}))
    assert (same.status, same.fallback) == ("degraded", "cache")
    for other in (
        job("POST", params={"a": "1", "b": ["x", "y"]}, json={"q": 2},
            headers={"X-User": "alice"}),
        job("POST", params={"a": "1", "b": ["x", "y"]}, json={"q": 1},
            headers={"X-User": "bob"}),
        job("POST", params={"a": "1", "b": ["y", "x"]}, json={"q": 1},
            headers={"X-User": "alice"}),
        job("PUT", params={"a": "1", "b": ["x", "y"]}, json={"q": 1},
            headers={"X-User": "alice"}),
    ):
        assert one_delivery(other).status == "dead", other


def test_a_callers_authorization_always_varies_the_key(configure, upstream: FaultServer) -> None:
    cached(configure, upstream)
    assert one_delivery(job(headers={"Authorization": "Bearer alice"})).status == "succeeded"
    upstream.set_mode("5xx")
    assert one_delivery(job(headers={"Authorization": "Bearer bob"})).status == "dead"
    assert one_delivery(job(headers={"Authorization": "Bearer alice"})).fallback == "cache"


def test_posts_are_not_cached_unless_the_cache_opts_in(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    cached(configure, upstream)
    prefix = get_runtime().settings.redis_key_prefix
    assert one_delivery(job("POST", json={"amount": 1})).status == "succeeded"
    assert list(redis_client.scan_iter(match=f"{prefix}cache:*")) == []
    upstream.set_mode("5xx")
    assert one_delivery(job("POST", json={"amount": 1})).status == "dead"


def test_everything_cached_expires_and_big_answers_are_not_cached(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    cached(configure, upstream, max_body_bytes=2000)
    prefix = get_runtime().settings.redis_key_prefix
    assert one_delivery(job(path="/small")).status == "succeeded"
    keys = list(redis_client.scan_iter(match=f"{prefix}cache:*"))
    assert len(keys) == 1
    assert 0 < redis_client.pttl(keys[0]) <= 60_000
    assert b"small" not in keys[0]  # the key is a digest: no path, params or header values
    upstream.set_mode("huge", size_bytes=5000)
    assert one_delivery(job(path="/big")).status == "succeeded"
    assert len(list(redis_client.scan_iter(match=f"{prefix}cache:*"))) == 1
    upstream.set_mode("5xx")
    assert one_delivery(job(path="/big")).status == "dead"


def test_the_default_cache_cap_is_the_setting(configure, upstream: FaultServer,
                                              redis_client: redis.Redis) -> None:
    configure([integration(upstream.url, fallbacks=[{"type": "cache"}])],
              CACHE_MAX_BODY_BYTES="100")
    cache = get_runtime().registry.get("shop").fallbacks[0]
    assert cache.max_body_bytes == 100 and cache.methods == ("GET", "HEAD")
    prefix = get_runtime().settings.redis_key_prefix
    upstream.set_mode("huge", size_bytes=101)
    assert one_delivery(job()).status == "succeeded"
    assert list(redis_client.scan_iter(match=f"{prefix}cache:*")) == []


# --- 7. Retry-After capped, ratelimit CLI ----------------------------------------------------

#: rate-limit-backoff starts at 5 s by default (the design table); these tests start it lower
#: so that the Retry-After, not the backoff, sets the delay they check.
FAST_RATE_LIMIT = {"rate_limit": {"initial_delay_ms": 100}}


@pytest.mark.parametrize("retry_after", ["3153600000", "Fri, 31 Dec 2125 23:59:59 GMT"])
def test_a_huge_retry_after_is_capped(configure, upstream: FaultServer, retry_after: str) -> None:
    configure([integration(upstream.url, strategies=FAST_RATE_LIMIT)], RETRY_AFTER_MAX="4000")
    upstream.set_mode("429", retry_after=retry_after)
    spec = job()
    with capture_logs() as logs:
        step = one_delivery(spec)
    assert step.status == "retry" and step.countdown_s == 4.0
    assert 3 < get_runtime().limiter.paused_for("shop") <= 4
    capped = [e for e in logs if e["event"] == "retry_after_capped"]
    assert len(capped) == 1 and capped[0]["cap_s"] == 4.0 and capped[0]["requested_s"] > 1e9
    rows = wait_rows("SELECT delay_ms, delay_source FROM attempts WHERE job_id = :j",
                     j=spec.job_id)
    assert rows == [{"delay_ms": 4000, "delay_source": "retry-after-cap"}]


def test_retry_after_max_defaults_to_the_defer_window(configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url, strategies=FAST_RATE_LIMIT)], MAX_DEFER_WINDOW="3000")
    assert get_runtime().settings.retry_after_max_ms == 3000
    upstream.set_mode("429", retry_after="86400")
    assert one_delivery(job()).countdown_s == 3.0
    assert get_runtime().limiter.paused_for("shop") <= 3


def test_a_retry_after_within_the_cap_is_kept(configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url, strategies=FAST_RATE_LIMIT)], RETRY_AFTER_MAX="60000")
    upstream.set_mode("429", retry_after_s=2)
    spec = job()
    assert one_delivery(spec).countdown_s == 2.0
    rows = wait_rows("SELECT delay_source FROM attempts WHERE job_id = :j", j=spec.job_id)
    assert rows == [{"delay_source": "retry-after"}]


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_ratelimit_status_and_resume_are_audited(configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url, rate_limit={"window_ms": 60_000,
                                                     "max_requests": 1000})])
    upstream.set_mode("429", retry_after="3153600000")
    assert one_delivery(job()).status == "retry"
    status = json.loads(cli("ratelimit", "status", "--json").output)
    assert len(status) == 1
    row = status[0]
    assert row["integration"] == "shop" and row["window_limit"] == 1000
    assert row["window_used"] == 1 and row["window_ms"] == 60_000
    assert 590 < row["paused_for_s"] <= 600
    assert row["pause_reason"] == "HTTP 429 Too Many Requests"
    human = cli("ratelimit", "status").output
    assert "shop" in human and "HTTP 429 Too Many Requests" in human

    result = cli("ratelimit", "resume", "shop", "--reason", "vendor says it is over")
    assert result.exit_code == 0, result.output
    assert "lifted" in result.output
    assert get_runtime().limiter.paused_for("shop") == 0.0
    assert json.loads(cli("ratelimit", "status", "--json").output)[0]["pause_reason"] is None
    alerts = wait_rows("SELECT kind, integration, message, details FROM alerts "
                       "WHERE kind = 'ratelimit_manual_resume'")
    assert alerts[0]["integration"] == "shop"
    assert alerts[0]["message"] == "vendor says it is over"
    assert 590 < alerts[0]["details"]["pause_left_s"] <= 600
    upstream.set_mode("ok")
    assert one_delivery(job()).status == "succeeded"  # the next job calls at once


def test_ratelimit_resume_of_an_unknown_integration_exits_2(
        configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url)])
    result = cli("ratelimit", "resume", "nope")
    assert result.exit_code == 2
    assert "Error: Unknown integration 'nope'. Known integrations: shop." in result.output
    assert audit_rows("SELECT kind FROM alerts") == []


def test_ratelimit_resume_without_a_pause_says_so(configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url)])
    status = json.loads(cli("ratelimit", "status", "--json").output)
    assert status[0]["paused_for_s"] == 0 and status[0]["pause_reason"] is None
    assert "not paused" in cli("ratelimit", "status").output
    result = cli("ratelimit", "resume", "shop")
    assert result.exit_code == 0
    assert result.output == "'shop' was not paused; nothing to lift (recorded anyway).\n"
    alerts = wait_rows("SELECT message, details FROM alerts "
                       "WHERE kind = 'ratelimit_manual_resume'")
    assert alerts == [{"message": "operator resume from recovery-cli",
                       "details": {"pause_left_s": 0.0}}]


def test_a_job_cannot_replace_an_api_fallbacks_credential(
        configure, upstream: FaultServer, backup: FaultServer, redis_client: redis.Redis) -> None:
    import recovery
    from recovery.engine.producer import EnqueueError
    from tests.integration.test_job_flow import queue_depth

    configure([integration(upstream.url, fallbacks=[
        {"type": "api", "base_url": backup.url, "headers": {"X-Backup-Key": FALLBACK_KEY}}])])
    before = queue_depth(redis_client)
    with pytest.raises(EnqueueError) as caught:
        recovery.enqueue("shop", "GET", "/acct", headers={"x-backup-key": "forged"})
    assert str(caught.value) == (
        "The header 'x-backup-key' is set by integration 'shop' itself (for its api fallback); "
        "a job cannot replace it, so remove it.")
    assert queue_depth(redis_client) == before
    assert audit_rows("SELECT id FROM jobs") == []
