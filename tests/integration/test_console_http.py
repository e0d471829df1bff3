"""The console over real HTTP (a `recovery-cli console` process, `requests` as the client):
login, roles, CSRF and cookie flags, and what the DLQ and rate-limit actions change.

The browser flow (log in, filter, replay through a worker, breakers, a job's timeline) is in
test_console_browser.py.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import select

from recovery.audit.models import Alert, DeadLetter
from recovery.dlq.store import envelope_view
from recovery.engine.runtime import Runtime, get_runtime
from tests.integration._console import Browser, ConsoleProcess, console_env, login
from tests.integration.test_dlq_support import (
    dlq_ids,
    integration_entry,
    key,
    kombu_message,
    make_envelope,
    park_all,
    work_jobs,
)

pytestmark = pytest.mark.integration

PAGES = ("/", "/overview.json", "/dlq/", "/dlq/quarantine", "/breakers/", "/jobs/")


@pytest.fixture
def setup(configure: Callable[..., dict[str, str]], tmp_path: Path
          ) -> Iterator[tuple[Runtime, Callable[..., ConsoleProcess]]]:
    """Integrations shop and crm (never called), and a way to start consoles on them."""
    env = configure([integration_entry("shop"), integration_entry("crm")],
                    DLQ_MAX_RETRIES="3")
    started: list[ConsoleProcess] = []

    def start(**extra: str) -> ConsoleProcess:
        console = ConsoleProcess(console_env(env, **extra),
                                 tmp_path / f"console{len(started)}.log")
        started.append(console)
        return console

    yield get_runtime(), start
    for console in started:
        console.stop()


def alerts(rt: Runtime, kind: str, *, expect: int = 1, timeout: float = 10.0
           ) -> list[dict[str, Any]]:
    """The alert rows of `kind`, waiting until `expect` of them are there."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with rt.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(
                select(Alert.__table__).where(Alert.__table__.c.kind == kind))]
        if len(rows) >= expect:
            return rows
        time.sleep(0.2)
    return rows


def wait_for_log(console: ConsoleProcess, event: str, count: int = 1,
                 timeout: float = 10.0) -> str:
    """The console's log once `event` appears in it `count` times."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console.log_path.read_text(errors="replace")
        if text.count(event) >= count:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{event!r} did not reach the console's log {count} times:\n{text}")


def all_alerts(rt: Runtime) -> list[str]:
    with rt.engine.connect() as conn:
        return [row.kind for row in conn.execute(select(Alert.__table__))]


def test_without_a_login_every_page_redirects_to_the_login_and_no_action_runs(setup) -> None:
    rt, start = setup
    console = start()
    anonymous = Browser(console.base)
    for path in PAGES:
        response = anonymous.page(path)
        assert response.status_code == 303, path
        assert response.headers["Location"].startswith("/login?next="), path
    response = anonymous.post(f"{console.base}/breakers/shop/open", allow_redirects=False,
                              data={"csrf_token": anonymous.token()}, timeout=30)
    assert response.status_code == 303 and response.headers["Location"].startswith("/login")
    assert rt.breaker(rt.registry.get("shop")).snapshot().state == "closed"
    assert all_alerts(rt) == []


def test_a_wrong_password_or_unknown_user_is_refused_with_one_sentence(setup) -> None:
    _, start = setup
    console = start()
    for user, password in (("alice", "not-her-password"), ("mallory", "alice-pass-1")):
        session = Browser(console.base)
        response = session.post(f"{console.base}/login", allow_redirects=False, timeout=30,
                                data={"username": user, "password": password,
                                      "csrf_token": session.token()})
        assert response.status_code == 401
        assert "The user name or password is wrong." in response.text
        assert session.page("/").status_code == 303
    log = wait_for_log(console, "console_login_refused", count=2)
    assert "not-her-password" not in log and "alice-pass-1" not in log


def test_five_failed_logins_pause_that_user_name_even_for_the_right_password(setup) -> None:
    _, start = setup
    console = start()
    session = Browser(console.base)

    def attempt(password: str) -> requests.Response:
        return session.post(f"{console.base}/login", allow_redirects=False, timeout=30,
                            data={"username": "alice", "password": password,
                                  "csrf_token": session.token()})

    assert [attempt(f"guess-{n}").status_code for n in range(5)] == [401] * 5
    paused = attempt("alice-pass-1")
    assert paused.status_code == 429
    assert "Too many failed logins; try again in 5 minutes." in paused.text
    assert session.page("/").status_code == 303
    login(console.base, "bob")  # another user name is not paused


def test_session_cookie_is_httponly_and_samesite_strict_and_secure_only_when_asked(
        setup) -> None:
    _, start = setup
    for extra, secure in (({}, False), ({"CONSOLE_SECURE_COOKIES": "true"}, True)):
        console = start(**extra)
        response = Browser(console.base).page("/login")
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith("recovery_console=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert ("Secure" in cookie.split(";", 1)[1]) is secure, cookie
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    logged_in = Browser(console.base)
    response = logged_in.post(f"{console.base}/login", allow_redirects=False, timeout=30,
                              data={"username": "alice", "password": "alice-pass-1",
                                    "csrf_token": logged_in.token()})
    assert response.status_code == 403, "a Secure cookie never comes back over plain http"


def _steer(session: Browser, headers: dict[str, str], with_token: bool) -> requests.Response:
    data = {"csrf_token": session.token("/breakers/")} if with_token else {}
    return session.post(f"{session.base}/breakers/shop/open", data=data, headers=headers,
                        allow_redirects=False, timeout=30)


def test_cross_site_posts_are_refused_with_403_and_change_nothing(setup) -> None:
    rt, start = setup
    console = start()
    alice = login(console.base, "alice")
    same = {"Origin": console.base}
    refused = [
        (same, False, "CSRF token is missing or stale"),
        ({"Origin": "https://evil.example"}, True, "did not come from a page of this console"),
        ({"Origin": "http://127.0.0.1:1"}, True, "did not come from a page of this console"),
        ({"Origin": "", "Referer": "https://evil.example/x"}, True, "did not come from"),
        ({"Origin": ""}, True, "did not come from a page of this console"),
    ]
    for headers, with_token, sentence in refused:
        response = _steer(alice, headers, with_token)
        assert response.status_code == 403, headers
        assert sentence in html.unescape(response.text), headers
    assert rt.breaker(rt.registry.get("shop")).snapshot().state == "closed"
    assert all_alerts(rt) == []
    referer_only = {"Origin": "", "Referer": f"{console.base}/breakers/"}
    assert _steer(alice, referer_only, True).status_code == 303
    assert rt.breaker(rt.registry.get("shop")).snapshot().state == "open"
    [row] = alerts(rt, "breaker_manual_open")
    assert row["integration"] == "shop" and row["details"]["actor"] == "alice"
    assert row["details"]["via"] == "console"
    log = wait_for_log(console, "console_action")
    assert log.count("console_csrf_refused") == len(refused)
    action = json.loads(next(line for line in log.splitlines() if "console_action" in line))
    assert (action["actor"], action["kind"]) == ("alice", "breaker_manual_open")


def test_a_viewer_reads_every_page_but_every_action_is_403_and_changes_nothing(
        setup, redis_client: redis.Redis) -> None:
    rt, start = setup
    entries = park_all([make_envelope("shop"), make_envelope("shop")], rt)
    rt.limiter.pause("shop", 120, "test")
    console = start()
    bob = login(console.base, "bob")
    for path in PAGES:
        assert bob.page(path).status_code == 200, path
    listing = bob.page("/dlq/").text
    assert 'name="job_id"' not in listing and "replay-selected" not in listing
    ids = [entry.job_id for entry in entries]
    for path, data in (("/breakers/shop/open", {}), ("/breakers/shop/close", {}),
                       ("/breakers/shop/resume", {}),
                       ("/dlq/replay", {"scope": "selected", "job_id": ids}),
                       ("/dlq/replay", {"scope": "all", "confirm": "yes"}),
                       ("/dlq/purge", {"job_id": ids, "confirm": "yes"})):
        response = bob.act(path, data)
        assert response.status_code == 403, path
        assert "bob is a viewer; only an operator may do this." in response.text
    assert dlq_ids(redis_client, rt) == ids and work_jobs(redis_client, rt) == []
    assert rt.breaker(rt.registry.get("shop")).snapshot().state == "closed"
    assert rt.limiter.paused_for("shop") > 100
    assert all_alerts(rt) == []


def test_dlq_pages_show_what_the_cli_json_shows_and_never_a_secret(
        setup, redis_client: redis.Redis) -> None:
    rt, start = setup
    [plain] = park_all([make_envelope("shop")], rt)
    leaky = make_envelope("crm").sealed_message() | {
        "headers": {"Authorization": "Bearer s3cr3t-t0ken"}, "body": {"password": "hunter2-pw"}}
    redis_client.lpush(key(rt, "dlq"), kombu_message(json.dumps(leaky)))
    redis_client.lpush(key(rt, "dlq"), kombu_message("{broken"))
    console = start()
    alice = login(console.base, "alice")
    listing = alice.page("/dlq/").text
    assert plain.job_id in listing and leaky["job_id"] in listing
    assert "malformed: The message body is broken JSON." in listing
    detail = alice.page(f"/dlq/entry/{leaky['job_id']}").text
    for text in (listing, detail):
        assert "s3cr3t" not in text and "hunter2" not in text
    shown = envelope_view(make_envelope().from_message(leaky))
    for name in shown:
        assert f"<th>{name}</th>" in detail
    assert leaky["idempotency_key"] in detail and "[REDACTED]" in detail
    attempts = alice.page(f"/dlq/entry/{plain.job_id}").text
    assert 'id="attempts"' in attempts and "/jobs/" + plain.job_id in attempts


def test_filters_page_and_bad_filters_get_a_sentence(setup) -> None:
    _, start = setup
    old = "2020-01-01T00:00:00+00:00"
    park_all([make_envelope("shop", replay_count=n % 3) for n in range(28)]
             + [make_envelope("crm", categories=("rate_limit",), dead_at=old)])
    console = start()
    alice = login(console.base, "alice")

    def count(**params: str) -> str:
        response = alice.page("/dlq/", **params)
        assert response.status_code == 200, response.text
        return response.text.split('id="dlq-count">', 1)[1].split(" in the DLQ", 1)[0]

    assert count() == "29 matching of 29"
    assert count(integration="crm") == "1 matching of 29"
    assert count(error_class="rate_limit") == "1 matching of 29"
    assert count(older_than="30d") == "1 matching of 29"
    assert count(newer_than="1h") == "28 matching of 29"
    assert count(min_replays="2") == "9 matching of 29"
    assert count(min_replays="1", max_replays="1", integration="shop") == "9 matching of 29"
    first, second = alice.page("/dlq/").text, alice.page("/dlq/", page="2").text
    assert first.count('class="pick"') == 25 and second.count('class="pick"') == 4
    assert "page 2 of 2" in second
    for params, sentence in (
            ({"integration": "nope"}, "Unknown integration 'nope'; known integrations: shop, crm."),
            ({"error_class": "bogus"}, "Unknown error class 'bogus'; use one of"),
            ({"older_than": "soon"}, "Older than: 'soon' is not a duration; use a whole number"),
            ({"min_replays": "-1"}, "Replays at least must be a whole number from 0 to 999999")):
        response = alice.page("/dlq/", **params)
        assert response.status_code == 400
        assert sentence in html.unescape(response.text), params


def test_replay_shows_the_dry_run_first_and_moves_only_what_it_showed(
        setup, redis_client: redis.Redis) -> None:
    rt, start = setup
    first, second, third = park_all([make_envelope("shop") for _ in range(3)], rt)
    console = start()
    alice = login(console.base, "alice")
    chosen = [first.job_id, third.job_id]
    dry = alice.act("/dlq/replay", {"scope": "selected", "job_id": chosen})
    assert dry.status_code == 200
    assert "Dry run, nothing changed: would replay 2, skip 0" in html.unescape(dry.text)
    assert dlq_ids(redis_client, rt) == [first.job_id, second.job_id, third.job_id]
    assert work_jobs(redis_client, rt) == [] and all_alerts(rt) == []
    park_all([make_envelope("shop")], rt)  # dead after the dry run: not shown, not replayed
    done = alice.submit_confirm(dry.text, "/dlq/replay")
    assert done.status_code == 200 and "Replayed 2, skipped 0" in done.text
    assert dlq_ids(redis_client, rt)[0] == second.job_id and len(dlq_ids(redis_client, rt)) == 2
    assert sorted(job["job_id"] for job in work_jobs(redis_client, rt)) == sorted(chosen)
    [row] = alerts(rt, "console_dlq_replay")
    assert row["details"]["actor"] == "alice" and sorted(row["details"]["job_ids"]) == \
        sorted(chosen)
    with rt.engine.connect() as conn:
        reasons = dict(conn.execute(select(DeadLetter.__table__.c.job_id,
                                           DeadLetter.__table__.c.state_reason)).all())
    assert reasons[first.job_id] == "replayed by console:alice"


def test_replay_all_matching_honours_the_filter_and_the_cap(
        setup, redis_client: redis.Redis) -> None:
    rt, start = setup
    shop = park_all([make_envelope("shop") for _ in range(3)] + [make_envelope("crm")], rt)
    console = start()
    alice = login(console.base, "alice")
    dry = alice.act("/dlq/replay", {"scope": "all", "integration": "shop", "limit": "2"})
    assert "would replay 2" in dry.text and "(cap 2)" in dry.text
    done = alice.submit_confirm(dry.text, "/dlq/replay")
    assert "Replayed 2" in done.text
    assert dlq_ids(redis_client, rt) == [shop[2].job_id, shop[3].job_id]
    again = alice.act("/dlq/replay", {"scope": "all", "integration": "shop", "limit": "2",
                                      "confirm": "yes"})
    assert "Replayed 1" in again.text and dlq_ids(redis_client, rt) == [shop[3].job_id]


def test_bad_replay_and_purge_input_is_400_with_a_sentence_and_moves_nothing(
        setup, redis_client: redis.Redis) -> None:
    rt, start = setup
    entries = park_all([make_envelope("shop"), make_envelope("shop")], rt)
    console = start()
    alice = login(console.base, "alice")
    ids = [entry.job_id for entry in entries]
    for path, data, sentence in (
            ("/dlq/replay", {"scope": "selected"},
             "Select at least one dead letter to replay, or replay all matching."),
            ("/dlq/replay", {"scope": "all", "limit": "0", "confirm": "yes"},
             "The cap must be a whole number of at least 1, got '0'."),
            ("/dlq/replay", {"scope": "all", "rate": "0", "confirm": "yes"},
             "The rate must be a number of entries per second above 0 and at most 1e+06, "
             "got '0'."),
            ("/dlq/replay", {"scope": "all", "rate": "fast", "confirm": "yes"},
             "got 'fast'."),
            ("/dlq/replay", {"scope": "all", "integration": "nope", "confirm": "yes"},
             "Unknown integration 'nope'"),
            ("/dlq/purge", {"confirm": "yes"}, "Select at least one dead letter to purge.")):
        response = alice.act(path, data)
        assert response.status_code == 400, data
        assert sentence in html.unescape(response.text), data
    assert dlq_ids(redis_client, rt) == ids and work_jobs(redis_client, rt) == []
    assert all_alerts(rt) == []


def test_purge_asks_first_then_deletes_only_the_selected_entries(
        setup, redis_client: redis.Redis) -> None:
    rt, start = setup
    first, second, third = park_all([make_envelope("shop") for _ in range(3)], rt)
    console = start()
    alice = login(console.base, "alice")
    chosen = [first.job_id, second.job_id]
    ask = alice.act("/dlq/purge", {"job_id": chosen})
    assert ask.status_code == 200 and "Purge 2 dead letters?" in ask.text
    assert first.job_id in ask.text and third.job_id not in ask.text
    assert len(dlq_ids(redis_client, rt)) == 3
    done = alice.act("/dlq/purge", {"job_id": chosen, "confirm": "yes"})
    assert done.status_code == 303
    assert "Purged 2 dead letters for good; 1 stay" in alice.page("/dlq/").text
    assert dlq_ids(redis_client, rt) == [third.job_id]
    [row] = alerts(rt, "console_dlq_purge")
    assert row["details"]["actor"] == "alice" and sorted(row["details"]["job_ids"]) == \
        sorted(chosen)
    with rt.engine.connect() as conn:
        states = dict(conn.execute(select(DeadLetter.__table__.c.job_id,
                                          DeadLetter.__table__.c.state)).all())
    assert states == {first.job_id: "purged", second.job_id: "purged", third.job_id: "parked"}


def test_resume_lifts_a_rate_limit_pause_and_is_audited(setup) -> None:
    rt, start = setup
    rt.limiter.pause("shop", 120, "upstream said Retry-After: 120")
    console = start()
    alice = login(console.base, "alice")
    page = alice.page("/breakers/").text
    row = page.split('id="breaker-shop"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="pause">' in row and " s</td>" in row.split('class="pause">', 1)[1]
    assert alice.act("/breakers/shop/resume", {"reason": "vendor is back"}).status_code == 303
    assert rt.limiter.paused_for("shop") == 0
    [alert] = alerts(rt, "ratelimit_manual_resume")
    assert alert["message"] == "vendor is back" and alert["details"]["actor"] == "alice"
    assert alert["details"]["pause_left_s"] > 100
    missing = alice.act("/breakers/nope/resume")
    assert missing.status_code == 404 and "nope" in html.unescape(missing.text)


def test_proxy_header_mode_trusts_only_the_named_header_and_maps_roles(setup) -> None:
    rt, start = setup
    console = start(CONSOLE_USERS="", CONSOLE_AUTH_HEADER="X-Forwarded-User",
                    CONSOLE_HEADER_ROLES="carol:operator,*:viewer")
    nobody = Browser(console.base)
    assert nobody.page("/").status_code == 403
    assert nobody.page("/login").status_code == 404  # the proxy logs users in
    dave = Browser(console.base)
    dave.headers["X-Forwarded-User"] = "dave"
    assert dave.page("/dlq/").status_code == 200
    assert dave.act("/breakers/shop/open").status_code == 403
    carol = Browser(console.base)
    carol.headers["X-Forwarded-User"] = "carol"
    assert carol.act("/breakers/shop/open").status_code == 303
    assert rt.breaker(rt.registry.get("shop")).snapshot().state == "open"
    [row] = alerts(rt, "breaker_manual_open")
    assert row["details"]["actor"] == "carol"


def test_sigterm_stops_the_console_cleanly(setup) -> None:
    _, start = setup
    console = start()
    assert console.stop() == 0
    assert "Console on http://127.0.0.1:" in console.log()


def test_an_entry_past_the_replay_cap_is_quarantined_and_can_be_released_once(
        setup, redis_client: redis.Redis) -> None:
    rt, start = setup
    [capped] = park_all([make_envelope("shop", replay_count=3)], rt)
    console = start()
    alice = login(console.base, "alice")
    dry = alice.act("/dlq/replay", {"scope": "all"})
    assert "would replay 0, skip 0, quarantine 1" in dry.text
    assert "replay cap reached: replayed 3 times, DLQ_MAX_RETRIES is 3" in dry.text
    assert "Replay 0 and quarantine 1 now" in dry.text
    done = alice.submit_confirm(dry.text, "/dlq/replay")
    assert "Replayed 0, skipped 0, quarantined 1, failed 0." in done.text
    page = alice.page("/dlq/quarantine").text
    assert capped.job_id in page and f"release-{capped.job_id}" in page
    assert f"release-{capped.job_id}" not in login(console.base, "bob").page(
        "/dlq/quarantine").text
    released = alice.act(f"/dlq/quarantine/{capped.job_id}/release")
    assert released.status_code == 303
    [job] = work_jobs(redis_client, rt)
    assert job["job_id"] == capped.job_id and job["replay_count"] == 4
    [row] = alerts(rt, "console_dlq_release")
    assert row["details"]["actor"] == "alice" and row["details"]["job_id"] == capped.job_id
    again = alice.act(f"/dlq/quarantine/{capped.job_id}/release")
    assert again.status_code == 409
    assert f"No quarantined entry has the job id '{capped.job_id}'" in html.unescape(again.text)
