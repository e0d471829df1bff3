"""Sentry: final failures, breaker openings and other alerts, with secrets scrubbed first.

`init_sentry(settings)` does nothing without `SENTRY_DSN`. With one, it enables the Celery
integration (task failures become events) and routes every event and breadcrumb through
`scrub_event` before it leaves the process. A job message anywhere in an event (the Celery
task's arguments) is replaced by its redacted view (`JobSpec.redacted`: names, no body, only
what the integration's `audit:` block shows); every other secret-looking key is replaced
(`recovery.core.redact.scrub_data`), free text goes through `recovery.core.redact.redact_text`, and
request headers and cookies go. Local variables are not sent at all: a frame holds request
bodies and headers under any name, which no allowlist can reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration

from recovery.config.settings import Settings
from recovery.core.message import job_message_view
from recovery.core.redact import REDACTED, redact_headers, scrub_data

RELEASE = "api-recovery@0.1.0"


def scrub_event(event: Any, _hint: Any = None) -> Any:
    """A copy of a Sentry event (or breadcrumb) with every secret we can recognise removed."""
    clean: dict[str, Any] = scrub_data(event, job_message_view)
    request = clean.get("request")
    if isinstance(request, dict):
        headers = request.get("headers")
        if isinstance(headers, Mapping):
            request["headers"] = redact_headers(headers)
        if "cookies" in request:
            request["cookies"] = REDACTED
    return clean


def init_sentry(settings: Settings) -> bool:
    """Start Sentry when `SENTRY_DSN` is set; True when it is active afterwards."""
    if not settings.sentry_dsn:
        return False
    client = sentry_sdk.get_client()
    if client.is_active() and client.dsn == settings.sentry_dsn:
        return True
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        release=RELEASE,
        environment=settings.sentry_environment,
        server_name=settings.service_name,
        integrations=[CeleryIntegration(monitor_beat_tasks=False, propagate_traces=False)],
        before_send=scrub_event,
        before_breadcrumb=scrub_event,
        include_local_variables=False,
        max_request_body_size="never",
        traces_sample_rate=None,
    )
    return sentry_sdk.get_client().is_active()


def sentry_active() -> bool:
    return sentry_sdk.get_client().is_active()


def capture_alert(kind: str, message: str, integration: str | None,
                  details: Mapping[str, Any]) -> None:
    """An alert as a Sentry message, grouped by kind and integration."""
    if not sentry_active():
        return
    sentry_sdk.capture_message(
        f"{kind}: {message}", level="error",
        tags={"alert": kind, "integration": integration or "-"},
        extras=dict(details), fingerprint=["alert", kind, integration or "-"],
    )


def capture_job_failure(job_id: str, integration: str, status: str, reason: str,
                        http_status: int | None = None) -> None:
    """A job that ended failed or dead-lettered, as a Sentry message grouped by integration."""
    if not sentry_active():
        return
    sentry_sdk.capture_message(
        f"Job {status}: {reason}", level="error",
        tags={"integration": integration, "job_status": status},
        extras={"job_id": job_id, "http_status": http_status},
        fingerprint=["job-final-failure", integration, status],
    )
