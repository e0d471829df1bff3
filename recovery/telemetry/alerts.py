"""Alerts: events an operator must hear about, sent to every channel we have.

`alert(kind, message, integration=None, **details)` writes a structlog error event
`alert_<kind>`, an `alerts` row in the audit trail, a Sentry message when Sentry is configured,
and, when `ALERT_WEBHOOK_URL` is set, a JSON POST delivered from a background thread with
retries. It never raises and never waits for the network: a job that raises an alert carries on.

Kinds raised by this system: breaker_opened, health_check_failing,
breaker_closed_by_health_check, dlq_replay_cap_reached, dlq_entry_unreplayable, dlq_trimmed,
dlq_trim_failed, auth_refresh_failed, poison_job.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import backoff
import requests
import structlog

from recovery.config.settings import get_settings
from recovery.core.redact import redact_text, redact_url, scrub_data
from recovery.telemetry.sentry import capture_alert

if TYPE_CHECKING:  # the engine hands the writer in (set_audit_source); alerts never build one
    from recovery.audit.writer import AuditWriter

log = structlog.get_logger(__name__)

WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_MAX_DELAY_S = 30.0
MAX_PENDING = 1000
EXIT_FLUSH_S = 3.0
_RESERVED_LOG_KEYS = frozenset({"event", "level", "timestamp", "integration", "alert_message"})


class _RetryableStatus(Exception):
    """The webhook answered with a status worth retrying (408, 429, 5xx)."""


class WebhookSender:
    """Delivers alert payloads to one URL from a background thread, retrying with backoff.

    `submit` only enqueues. A full queue drops the alert with a warning rather than block.
    The thread is started on first use and again in a forked child, which does not inherit it.
    """

    def __init__(self, url: str, *, tries: int = 5, base_delay_s: float = 0.5,
                 timeout_s: float = WEBHOOK_TIMEOUT_S, max_pending: int = MAX_PENDING) -> None:
        self.url = url
        self._tries = tries
        self._base_delay_s = base_delay_s
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pid = -1
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(max_pending)

    def submit(self, payload: dict[str, Any]) -> bool:
        self._ensure_thread()
        try:
            self._queue.put_nowait(payload)
            return True
        except queue.Full:
            log.warning("alert_webhook_dropped", kind=payload.get("kind"),
                        reason=f"more than {self._max_pending} alerts are waiting")
            return False

    def flush(self, timeout_s: float) -> bool:
        """Wait until every submitted alert was delivered or given up; False on timeout."""
        done = self._queue.all_tasks_done
        with done:
            return done.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout_s)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._queue = queue.Queue(self._max_pending)
            threading.Thread(target=self._run, name="alert-webhook", daemon=True).start()

    def _run(self) -> None:
        own = self._queue
        session = requests.Session()
        while True:
            payload = own.get()
            try:
                self._deliver(session, payload)
            except Exception as exc:
                log.warning("alert_webhook_failed", kind=payload.get("kind"),
                            url=redact_url(self.url), error=redact_text(str(exc)))
            finally:
                own.task_done()

    def _deliver(self, session: requests.Session, payload: dict[str, Any]) -> None:
        def post() -> None:
            response = session.post(self.url, json=payload, timeout=self._timeout_s,
                                    allow_redirects=False)
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise _RetryableStatus(f"the webhook answered HTTP {response.status_code}")
            if response.status_code >= 400:
                raise ValueError(f"the webhook refused the alert with HTTP "
                                 f"{response.status_code}; check ALERT_WEBHOOK_URL")

        backoff.on_exception(
            backoff.expo, (requests.RequestException, _RetryableStatus),
            max_tries=self._tries, factor=self._base_delay_s, max_value=WEBHOOK_MAX_DELAY_S,
            jitter=backoff.full_jitter, logger=None,
        )(post)()


class Alerter:
    """Fans one alert out to the log, the audit trail, Sentry and the webhook."""

    def __init__(
        self,
        *,
        service: str,
        audit: Callable[[], AuditWriter | None],
        webhook: WebhookSender | None = None,
        sentry: Callable[[str, str, str | None, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.service = service
        self.webhook = webhook
        self._audit = audit
        self._sentry = sentry

    def alert(self, kind: str, message: str, integration: str | None = None,
              **details: Any) -> None:
        name = _kind(kind)
        text = redact_text(message)
        clean = _json_safe(scrub_data(details))
        logged = {k if k not in _RESERVED_LOG_KEYS else f"detail_{k}": v for k, v in clean.items()}
        log.error(f"alert_{name}", integration=integration, alert_message=text, **logged)
        self._each_channel(name, text, integration, clean)

    def _each_channel(self, kind: str, message: str, integration: str | None,
                      details: dict[str, Any]) -> None:
        at = datetime.now(UTC)
        try:
            writer = self._audit()
            if writer is not None:
                writer.alert(kind, integration, message, details, at=at)
        except Exception as exc:
            log.warning("alert_audit_failed", kind=kind, error=redact_text(str(exc)))
        if self._sentry is not None:
            try:
                self._sentry(kind, message, integration, details)
            except Exception as exc:
                log.warning("alert_sentry_failed", kind=kind, error=redact_text(str(exc)))
        if self.webhook is not None:
            self.webhook.submit({"kind": kind, "message": message, "integration": integration,
                                 "details": details, "service": self.service,
                                 "at": at.isoformat()})


def _kind(kind: str) -> str:
    """Alert kinds are snake_case words; anything else is folded into that shape."""
    return re.sub(r"[^a-z0-9_]+", "_", kind.strip().lower()).strip("_") or "unnamed"


def _json_safe(value: Any) -> dict[str, Any]:
    """Details as plain JSON (the audit column and the webhook body are JSON)."""
    safe = json.loads(json.dumps(value, default=str))
    return safe if isinstance(safe, dict) else {"value": safe}


_alerter: Alerter | None = None
_alerter_lock = threading.Lock()


_audit_source: Callable[[], AuditWriter | None] | None = None


def set_audit_source(source: Callable[[], AuditWriter | None] | None) -> None:
    """Where the runtime's audit writer comes from (the engine registers it when imported);
    without one, alerts are not written to the audit trail."""
    global _audit_source
    _audit_source = source


def _runtime_audit() -> AuditWriter | None:
    return _audit_source() if _audit_source is not None else None


def build_alerter() -> Alerter:
    """The alerter configured from the environment (settings, ALERT_WEBHOOK_URL)."""
    settings = get_settings()
    url = settings.alert_webhook_url
    webhook = WebhookSender(url, tries=settings.alert_webhook_tries) if url else None
    return Alerter(service=settings.service_name, audit=_runtime_audit, webhook=webhook,
                   sentry=capture_alert)


def get_alerter() -> Alerter:
    global _alerter
    with _alerter_lock:
        if _alerter is None:
            _alerter = build_alerter()
            if _alerter.webhook is not None:
                atexit.register(_alerter.webhook.flush, EXIT_FLUSH_S)
        return _alerter


def set_alerter(alerter: Alerter | None) -> None:
    """Install an alerter (tests, the demo); None rebuilds one from the environment on next use."""
    global _alerter
    with _alerter_lock:
        _alerter = alerter


def alert(kind: str, message: str, integration: str | None = None, **details: Any) -> None:
    """Raise an alert on every channel. Never raises, never blocks on the network."""
    try:
        get_alerter().alert(kind, message, integration, **details)
    except Exception as exc:
        log.error("alert_failed", kind=kind, integration=integration,
                  error=redact_text(str(exc)), error_type=type(exc).__name__)


_breaker_alerts_installed = False


def install_breaker_alerts() -> None:
    """Alert when a breaker trips (closed -> open). Idempotent.

    A breaker that re-opens after a failed probe is the same outage, so half-open -> open
    is not alerted again.
    """
    global _breaker_alerts_installed
    with _alerter_lock:
        _breaker_alerts_installed = True


def breaker_transition_hook(integration: str, from_state: str, to_state: str, reason: str,
                            at: datetime) -> None:
    """Told of every breaker transition by the runtime; alerts once installed."""
    if _breaker_alerts_installed:
        _on_breaker_transition(integration, from_state, to_state, reason, at)


def _on_breaker_transition(integration: str, from_state: str, to_state: str, reason: str,
                           at: datetime) -> None:
    if from_state == "closed" and to_state == "open":
        alert("breaker_opened",
              f"The circuit breaker of '{integration}' opened ({reason}); calls are deferred "
              "until a probe or a health check succeeds.",
              integration=integration, reason=reason, at=at.isoformat())
