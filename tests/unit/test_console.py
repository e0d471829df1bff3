"""The console's pieces that need no services: settings, start checks, passwords, CSRF
helpers, filters, job search input, the timeline and the SVG charts; the CLI's refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from werkzeug.datastructures import MultiDict
from werkzeug.security import check_password_hash

from recovery.cli.main import main
from recovery.config.settings import SettingsError, load_settings
from recovery.core.message import JobSpec
from recovery.dlq.envelope import envelope_for
from recovery.ops.console import ConsoleConfig, ConsoleConfigError, charts, create_app
from recovery.ops.console.config import hash_password
from recovery.ops.console.dlqview import ConsoleFilter, FilterError, parse_filter
from recovery.ops.console.jobsearch import SearchError, parse_query, timeline
from recovery.ops.console.security import safe_next, same_site
from recovery.ops.console.throttle import LoginThrottle, minutes

HASH = hash_password("a-good-password")
KEY = "s" * 40


def settings(**env: str) -> Any:
    return load_settings(env)


@pytest.mark.parametrize(("env", "sentence"), [
    ({"CONSOLE_USERS": "alice"},
     "CONSOLE_USERS entry 1 must look like name:role:hash, the hash made by `recovery-cli "
     "console hash-password` (not shown: it is a secret)."),
    ({"CONSOLE_USERS": f"alice:admin:{HASH}"},
     "CONSOLE_USERS entry 1 has the role 'admin'; use viewer or operator."),
    ({"CONSOLE_USERS": "alice:viewer:hunter2"},
     "CONSOLE_USERS holds a password that is not a hash; make one with `recovery-cli console "
     "hash-password` (the value is not shown)."),
    ({"CONSOLE_USERS": f"al ice:viewer:{HASH}"},
     "CONSOLE_USERS entry 1 must look like name:role:hash, the hash made by `recovery-cli "
     "console hash-password` (not shown: it is a secret)."),
    ({"CONSOLE_SECRET_KEY": "short-secret"},
     "CONSOLE_SECRET_KEY must be at least 32 characters, got 12 (not shown: it is a secret); "
     "generate one with `openssl rand -hex 32`."),
    ({"CONSOLE_AUTH_HEADER": "X Forwarded"},
     "CONSOLE_AUTH_HEADER must be a header name such as X-Forwarded-User, got 'X Forwarded'."),
    ({"CONSOLE_HEADER_ROLES": "carol"},
     "CONSOLE_HEADER_ROLES entry 1 must look like user:role (or *:role for everyone else)."),
    ({"CONSOLE_PORT": "70000"},
     "CONSOLE_PORT must be at most 65535, got '70000'; a value this large is almost certainly "
     "a mistake."),
    ({"CONSOLE_SECURE_COOKIES": "sometimes"},
     "CONSOLE_SECURE_COOKIES must be true or false (1/0 and yes/no also work), got "
     "'sometimes'."),
])
def test_bad_console_settings_stop_the_start_with_a_sentence_naming_the_variable(
        env: dict[str, str], sentence: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(**env)
    assert str(caught.value) == sentence
    assert "hunter2" not in str(caught.value) and "short-secret" not in str(caught.value)


def test_console_settings_parse_users_roles_and_defaults() -> None:
    loaded = settings(CONSOLE_USERS=f" alice:operator:{HASH} , bob:viewer:{HASH},",
                      CONSOLE_HEADER_ROLES="carol:operator,*:viewer")
    assert loaded.console_users == (("alice", "operator", HASH), ("bob", "viewer", HASH))
    assert loaded.console_header_roles == (("carol", "operator"), ("*", "viewer"))
    assert (loaded.console_host, loaded.console_port) == ("127.0.0.1", 9809)
    assert loaded.console_secure_cookies is None and loaded.console_secret_key is None


@pytest.mark.parametrize(("env", "sentence"), [
    ({}, "The console needs a credential: set CONSOLE_USERS (name:role:hash, hashes from "
         "`recovery-cli console hash-password`) or CONSOLE_AUTH_HEADER behind a proxy."),
    ({"CONSOLE_USERS": f"alice:operator:{HASH}"},
     "CONSOLE_SECRET_KEY is required to sign the console's session cookie; generate one with "
     "`openssl rand -hex 32`."),
    ({"CONSOLE_AUTH_HEADER": "X-Forwarded-User", "CONSOLE_SECRET_KEY": KEY},
     "CONSOLE_AUTH_HEADER is set but CONSOLE_HEADER_ROLES is empty; map the proxy's user names "
     "to roles, e.g. alice:operator,*:viewer."),
    ({"CONSOLE_USERS": "alice:operator:md5$x$y", "CONSOLE_SECRET_KEY": KEY},
     "CONSOLE_USERS has a hash of an unknown kind for 'alice'; make it with `recovery-cli "
     "console hash-password` (scrypt or pbkdf2)."),
])
def test_the_console_refuses_to_start_without_a_usable_credential(
        env: dict[str, str], sentence: str) -> None:
    with pytest.raises(ConsoleConfigError) as caught:
        ConsoleConfig.from_settings(settings(**env))
    assert str(caught.value) == sentence


def _config(host: str | None = None, **env: str) -> ConsoleConfig:
    base = {"CONSOLE_USERS": f"alice:operator:{HASH}", "CONSOLE_SECRET_KEY": KEY}
    return ConsoleConfig.from_settings(settings(**base, **env), host)


def test_cookies_are_secure_unless_bound_to_loopback_or_told_otherwise() -> None:
    assert _config().secure_cookies is False
    assert _config("0.0.0.0").secure_cookies is True
    assert _config("0.0.0.0", CONSOLE_SECURE_COOKIES="false").secure_cookies is False
    assert _config(CONSOLE_SECURE_COOKIES="true").secure_cookies is True


def test_passwords_check_against_the_hash_and_proxy_users_map_to_roles() -> None:
    config = _config()
    user = config.check_password("alice", "a-good-password")
    assert user is not None and user.can_act
    assert config.check_password("alice", "a-wrong-password") is None
    assert config.check_password("mallory", "a-good-password") is None
    assert check_password_hash(HASH, "a-good-password") and HASH.startswith("scrypt:")
    proxied = ConsoleConfig.from_settings(settings(
        CONSOLE_AUTH_HEADER="X-Forwarded-User", CONSOLE_HEADER_ROLES="carol:operator",
        CONSOLE_SECRET_KEY=KEY))
    carol = proxied.header_user("carol")
    assert carol is not None and carol.role == "operator"
    assert proxied.header_user("dave") is None and proxied.header_user("") is None


def test_same_site_compares_scheme_host_and_port() -> None:
    ours = "http://127.0.0.1:9809/"
    assert same_site("http://127.0.0.1:9809", ours)
    assert same_site("http://127.0.0.1:9809/dlq/?x=1", ours)
    for other in ("https://127.0.0.1:9809", "http://127.0.0.1:9810", "http://evil.example",
                  "null", "", None):
        assert not same_site(other, ours), other


def test_after_login_only_a_local_path_is_followed() -> None:
    app = create_app(SimpleNamespace(), _config())  # type: ignore[arg-type]
    with app.test_request_context():
        assert safe_next("/dlq/?integration=shop") == "/dlq/?integration=shop"
        for bad in ("//evil.example/", "https://evil.example/", "/\\evil.example", None, ""):
            assert safe_next(bad) == "/", bad


def test_login_post_without_the_csrf_token_is_403_before_any_password_check() -> None:
    client = create_app(SimpleNamespace(), _config()).test_client()  # type: ignore[arg-type]
    response = client.post("/login", data={"username": "alice", "password": "a-good-password"},
                           headers={"Origin": "http://localhost"})
    assert response.status_code == 403
    assert b"CSRF token is missing or stale" in response.data
    assert "recovery_console" not in response.headers.get("Set-Cookie", "")


def _envelope(replays: int, integration: str = "shop") -> Any:
    job = JobSpec(job_id=f"job-{replays}", integration=integration, method="GET", path="/x",
                  json=None, params=None, headers={}, idempotency_key="k",
                  enqueued_at=datetime.now(UTC).isoformat(), replay_count=replays)
    return envelope_for(job, categories=["server_error"], last_status=503, message="m",
                        attempts=1, dead_at=datetime.now(UTC).isoformat())


def test_console_filter_adds_job_ids_and_replay_counts_to_the_dlq_filter() -> None:
    envelopes = [_envelope(n) for n in range(4)]
    flt = ConsoleFilter(min_replays=1, max_replays=2)
    assert [e.replay_count for e in envelopes if flt.matches(e)] == [1, 2]
    picked = ConsoleFilter(job_ids=frozenset({"job-0", "job-3"}), integration="shop")
    assert [e.job_id for e in envelopes if picked.matches(e)] == ["job-0", "job-3"]
    assert not ConsoleFilter(integration="crm").matches(envelopes[0])
    assert ConsoleFilter().is_empty and not picked.is_empty
    assert picked.describe() == {"integration": "shop", "job_ids": ["job-0", "job-3"]}


@pytest.mark.parametrize(("form", "sentence"), [
    ({"integration": "nope"}, "Unknown integration 'nope'; known integrations: shop, crm."),
    ({"error_class": "oops"}, "Unknown error class 'oops'; use one of "),
    ({"newer_than": "2 hours"}, "Dead within: '2 hours' is not a duration; use a whole number "
                                "and a unit, such as 90s, 30m, 2h, 7d or 1w."),
    ({"max_replays": "1.5"}, "Replays at most must be a whole number from 0 to 999999, got "
                             "'1.5'."),
])
def test_bad_dlq_filters_are_refused_with_a_sentence(form: dict[str, str],
                                                      sentence: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(form, ["shop", "crm"])
    assert str(caught.value).startswith(sentence)


def test_dlq_filter_reads_ages_and_every_selected_job() -> None:
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    form = MultiDict([("older_than", "2h"), ("job_id", "a"), ("job_id", "b"), ("job_id", "")])
    flt = parse_filter(form, ["shop"], now)
    assert flt.older_than == now - timedelta(hours=2) and flt.job_ids == frozenset({"a", "b"})


@pytest.mark.parametrize(("form", "sentence"), [
    ({"status": "lost"}, "Unknown job status 'lost'; use one of queued, running, retrying, "
                         "deferred, succeeded, degraded, failed, dead, duplicate."),
    ({"since": "yesterday"}, "From must be an ISO 8601 time such as 2026-05-01T12:00 (UTC "
                             "unless it names a zone), got 'yesterday'."),
    ({"since": "2026-05-02", "until": "2026-05-01"}, "From must not be later than Until."),
])
def test_bad_job_searches_are_refused_with_a_sentence(form: dict[str, str],
                                                       sentence: str) -> None:
    with pytest.raises(SearchError) as caught:
        parse_query(form)
    assert str(caught.value) == sentence


def test_job_search_reads_times_as_utc() -> None:
    query = parse_query({"since": "2026-05-01T12:00", "job_id": " abc "})
    assert query.since == datetime(2026, 5, 1, 12, tzinfo=UTC) and query.job_id == "abc"


def _attempt(number: int, at: str, duration: int) -> dict[str, Any]:
    return {"number": number, "started_at": at, "duration_ms": duration}


def test_timeline_places_attempts_and_counts_runs_after_a_replay() -> None:
    job = {"attempts": [_attempt(1, "2026-05-01T12:00:00+00:00", 100),
                        _attempt(2, "2026-05-01T12:00:01+00:00", 100),
                        _attempt(1, "2026-05-01T12:00:09+00:00", 1000)]}
    rows = timeline(job)
    assert [row["offset_ms"] for row in rows] == [0, 1000, 9000]
    assert [row["run"] for row in rows] == [1, 1, 2]
    assert [row["left_pct"] for row in rows] == [0.0, 10.0, 90.0]
    assert [row["width_pct"] for row in rows] == [1.0, 1.0, 10.0]
    assert timeline({"attempts": []}) == []


def test_charts_draw_one_bar_per_nonzero_minute_and_escape_class_names() -> None:
    drawn = str(charts.bars([0, 2, 0, 4], label="calls"))
    assert drawn.count("<rect") == 2 and "<title>calls: 6 in the last hour</title>" in drawn
    stacked = str(charts.stacked({"<script>": [1, 0], "timeout": [1, 3]}, label="failures"))
    assert "<script>" not in stacked and "&lt;script&gt; 1" in stacked
    assert stacked.count("<rect") == 3 and "failures: 5 in the last hour" in stacked
    assert "<rect" not in str(charts.bars([0, 0], label="retries"))


def test_cli_console_refuses_to_start_without_credentials(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    for name in ("CONSOLE_USERS", "CONSOLE_AUTH_HEADER", "CONSOLE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    from recovery.config.settings import reset_settings
    from recovery.engine.runtime import reset_runtime

    reset_settings()
    try:
        result = CliRunner().invoke(main, ["console"])
    finally:
        reset_runtime()
        reset_settings()
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: The console needs a credential: set CONSOLE_USERS (name:role:hash, hashes from "
        "`recovery-cli console hash-password`) or CONSOLE_AUTH_HEADER behind a proxy.")


def test_cli_hash_password_prints_a_verifiable_hash_and_refuses_short_ones() -> None:
    result = CliRunner().invoke(main, ["console", "hash-password"],
                                input="correct-horse\ncorrect-horse\n")
    assert result.exit_code == 0, result.output
    digest = result.output.strip().splitlines()[-1]
    assert check_password_hash(digest, "correct-horse") and "correct-horse" not in digest
    short = CliRunner().invoke(main, ["console", "hash-password", "--password", "short"])
    assert short.exit_code == 2
    assert short.output.strip() == "Error: The password must be at least 8 characters long."


def test_login_throttle_pauses_a_client_and_name_after_five_failures_for_the_window() -> None:
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(4):
        throttle.failed("10.0.0.1", "alice")
    assert throttle.wait_s("10.0.0.1", "alice") == 0
    throttle.failed("10.0.0.1", "alice")
    assert throttle.wait_s("10.0.0.1", "alice") == 300
    assert throttle.wait_s("10.0.0.2", "alice") == 0 and throttle.wait_s("10.0.0.1", "bob") == 0
    now[0] += 299
    assert throttle.wait_s("10.0.0.1", "alice") == 1 and minutes(1) == 1
    now[0] += 2
    assert throttle.wait_s("10.0.0.1", "alice") == 0
    throttle.failed("10.0.0.1", "alice")
    throttle.succeeded("10.0.0.1", "alice")
    assert throttle.wait_s("10.0.0.1", "alice") == 0


def test_login_throttle_holds_a_bounded_number_of_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import recovery.ops.console.throttle as module

    monkeypatch.setattr(module, "MAX_KEYS", 3)
    throttle = LoginThrottle()
    for n in range(10):
        throttle.failed("10.0.0.1", f"user{n}")
    assert len(throttle._failures) == 3
