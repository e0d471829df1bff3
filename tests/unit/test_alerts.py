"""Alerts reach the log, the audit trail, Sentry and the webhook, redacted and without blocking."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from structlog.testing import capture_logs

from recovery.audit.models import Alert, Base
from recovery.audit.writer import AuditWriter
from recovery.config.settings import SettingsError, reset_settings
from recovery.telemetry import alerts

SECRET = "sk_live_4f9a8b7c6d5e"


class Webhook:
    """A local webhook that answers with scripted statuses and can hold requests open."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[dict[str, Any]] = []
        self.received = threading.Event()
        self.release = threading.Event()
        self.release.set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                hook.received.set()
                hook.release.wait(10)
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def audit() -> AuditWriter:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    return AuditWriter(engine)


def alert_rows(writer: AuditWriter) -> list[Any]:
    with writer.engine.connect() as conn:
        return list(conn.execute(select(Alert.__table__)))


def test_an_alert_goes_to_the_log_the_audit_trail_and_sentry_redacted(
    audit: AuditWriter,
) -> None:
    sent: list[tuple[str, str, str | None, Mapping[str, Any]]] = []
    alerter = alerts.Alerter(service="svc", audit=lambda: audit,
                             sentry=lambda *args: sent.append(args))

    with capture_logs() as logs:
        alerter.alert("breaker_opened", f"Breaker opened; upstream said token={SECRET}",
                      integration="crm", reason="consecutive_failures=5",
                      headers={"Authorization": f"Bearer {SECRET}"})

    assert logs[0]["event"] == "alert_breaker_opened"
    assert logs[0]["log_level"] == "error"
    assert logs[0]["integration"] == "crm"
    rows = alert_rows(audit)
    assert [(r.kind, r.integration) for r in rows] == [("breaker_opened", "crm")]
    assert rows[0].details["reason"] == "consecutive_failures=5"
    assert sent[0][0] == "breaker_opened"
    everything = json.dumps([logs, [r.message for r in rows], [r.details for r in rows], sent],
                            default=str)
    assert SECRET not in everything


def test_the_webhook_receives_the_alert_and_retries_server_errors(webhook: Webhook) -> None:
    webhook.statuses = [503, 500]
    sender = alerts.WebhookSender(webhook.url, tries=4, base_delay_s=0.01)
    alerter = alerts.Alerter(service="svc", audit=lambda: None, webhook=sender)

    alerter.alert("health_check_failing", "crm failed 3 checks", integration="crm",
                  consecutive_failures=3, api_key=SECRET)

    assert sender.flush(10)
    assert len(webhook.bodies) == 3
    body = webhook.bodies[-1]
    assert body["kind"] == "health_check_failing"
    assert body["integration"] == "crm"
    assert body["service"] == "svc"
    assert body["details"]["consecutive_failures"] == 3
    assert datetime.fromisoformat(body["at"]).tzinfo is not None
    assert SECRET not in json.dumps(webhook.bodies)


def test_a_refusing_webhook_is_not_retried_and_is_logged(webhook: Webhook) -> None:
    webhook.statuses = [400]
    sender = alerts.WebhookSender(webhook.url, tries=4, base_delay_s=0.01)

    with capture_logs() as logs:
        sender.submit({"kind": "x"})
        assert sender.flush(10)

    assert len(webhook.bodies) == 1
    assert any(entry["event"] == "alert_webhook_failed" for entry in logs)


def test_alerting_returns_while_the_webhook_is_still_answering(webhook: Webhook) -> None:
    webhook.release.clear()
    sender = alerts.WebhookSender(webhook.url, tries=1)
    alerter = alerts.Alerter(service="svc", audit=lambda: None, webhook=sender)

    alerter.alert("dlq_replay_cap_reached", "job j1 reached the replay cap")
    returned_while_held = not webhook.release.is_set()
    assert webhook.received.wait(10)

    assert returned_while_held
    assert not sender.flush(0.05)
    webhook.release.set()
    assert sender.flush(10)


def test_a_full_queue_drops_the_alert_instead_of_blocking(webhook: Webhook) -> None:
    webhook.release.clear()
    sender = alerts.WebhookSender(webhook.url, tries=1, max_pending=1)
    sender.submit({"kind": "first"})
    assert webhook.received.wait(10)
    assert sender.submit({"kind": "second"})

    with capture_logs() as logs:
        accepted = sender.submit({"kind": "third"})

    assert not accepted
    assert logs[0]["event"] == "alert_webhook_dropped"
    webhook.release.set()
    assert sender.flush(10)
    assert [b["kind"] for b in webhook.bodies] == ["first", "second"]


def test_a_broken_channel_does_not_stop_the_others_or_raise(audit: AuditWriter) -> None:
    def sentry_down(*_: Any) -> None:
        raise RuntimeError("sentry transport exploded")

    def audit_down() -> AuditWriter:
        raise RuntimeError("no database configured")

    alerter = alerts.Alerter(service="svc", audit=audit_down, sentry=sentry_down)
    with capture_logs() as logs:
        alerter.alert("auth_refresh_failed", "token refresh failed for crm", integration="crm")

    events = [entry["event"] for entry in logs]
    assert events == ["alert_auth_refresh_failed", "alert_audit_failed", "alert_sentry_failed"]


def test_the_module_level_alert_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode() -> alerts.Alerter:
        raise SettingsError("ALERT_WEBHOOK_URL must be an http:// or https:// URL.")

    monkeypatch.setattr(alerts, "get_alerter", explode)
    with capture_logs() as logs:
        alerts.alert("breaker_opened", "crm opened", integration="crm")

    assert logs[0]["event"] == "alert_failed"


def test_breaker_trips_alert_but_reopening_after_a_probe_does_not(
    audit: AuditWriter,
) -> None:
    alerts.set_alerter(alerts.Alerter(service="svc", audit=lambda: audit))
    try:
        at = datetime.now(UTC)
        alerts._on_breaker_transition("crm", "closed", "open", "consecutive_failures=5", at)
        alerts._on_breaker_transition("crm", "half_open", "open", "probe_failed", at)
        alerts._on_breaker_transition("crm", "half_open", "closed", "probe_succeeded", at)
    finally:
        alerts.set_alerter(None)

    assert [(r.kind, r.details["reason"]) for r in alert_rows(audit)] == [
        ("breaker_opened", "consecutive_failures=5")]


def test_a_bad_webhook_url_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"ftp://hooks.example.com/?token={SECRET}")

    reset_settings()  # the URL is validated with every other setting, when they are read
    try:
        with pytest.raises(SettingsError, match="ALERT_WEBHOOK_URL must be an http") as caught:
            alerts.build_alerter()
    finally:
        monkeypatch.delenv("ALERT_WEBHOOK_URL")
        reset_settings()

    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(("kind", "normalised"), [
    ("breaker_opened", "breaker_opened"),
    ("Health Check Failing", "health_check_failing"),
    ("dlq-replay-cap", "dlq_replay_cap"),
    ("!!!", "unnamed"),
])
def test_alert_kinds_are_snake_case(kind: str, normalised: str, audit: AuditWriter) -> None:
    alerter = alerts.Alerter(service="svc", audit=lambda: audit)
    with capture_logs() as logs:
        alerter.alert(kind, "message")

    assert logs[0]["event"] == f"alert_{normalised}"
    assert alert_rows(audit)[0].kind == normalised
