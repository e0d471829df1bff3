"""Sentry with a DSN pointed at a local endpoint that records every envelope: failures, alerts
and task errors arrive, and no secret does."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk
from celery import Celery

from recovery.config.settings import load_settings
from recovery.telemetry import alerts
from recovery.telemetry.sentry import capture_alert, capture_job_failure, init_sentry, scrub_event


class Collector:
    """Stands in for sentry.io: stores each envelope body, decompressed."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                assert encoding in ("", "gzip", "deflate"), encoding
                collector.bodies.append(raw.decode("utf-8", "replace"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for body in self.bodies:
            lines = body.splitlines()
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
def sentry(collector: Collector) -> Iterator[None]:
    settings = load_settings({"SENTRY_DSN": f"http://publickey@127.0.0.1:{collector.port}/42"})
    assert init_sentry(settings)
    yield
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.init()


def leaky_call(secret: str) -> None:
    password = secret
    headers = {"Authorization": f"Bearer {secret}", "X-Api-Key": secret}
    url = f"https://ana:{secret}@api.example.com/v1/orders?token={secret}"
    raise RuntimeError(f"upstream refused api_key={secret} calling {url} with {headers}"
                       f" ({len(password)})")


def test_nothing_secret_reaches_sentry(sentry: None, collector: Collector) -> None:
    secret = f"s3cr3t{uuid.uuid4().hex}"
    logging.getLogger("recovery.test").warning("calling upstream with token=%s", secret)
    try:
        leaky_call(secret)
    except RuntimeError:
        sentry_sdk.capture_exception()
    alerter = alerts.Alerter(service="svc", audit=lambda: None, sentry=capture_alert)
    alerter.alert("breaker_opened", f"crm opened after Bearer {secret}", integration="crm",
                  client_secret=secret, reason="consecutive_failures=5")
    capture_job_failure("job-1", "crm", "dead", f"gave up; last url had ?access_token={secret}",
                        http_status=503)
    failing_task(secret)
    sentry_sdk.flush(timeout=10)

    events = collector.events()
    everything = "\n".join(collector.bodies)
    assert secret not in everything
    messages = json.dumps(events)
    assert "RuntimeError" in messages
    assert "breaker_opened: crm opened" in messages
    assert "Job dead: gave up" in messages
    assert "test_sentry.explode" in messages
    assert len(events) >= 4


def failing_task(secret: str) -> None:
    """A Celery task failing in a worker-like run: the Celery integration reports it."""
    app = Celery("sentry-test", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(name="test_sentry.explode")
    def explode(job: dict[str, Any]) -> None:
        raise ValueError(f"task failed for {job['headers']['Authorization']}")

    explode.apply(kwargs={"job": {"headers": {"Authorization": f"Bearer {secret}"},
                                  "params": {"api_key": secret}}})


def test_without_a_dsn_sentry_stays_off(collector: Collector) -> None:
    assert not init_sentry(load_settings({}))
    capture_job_failure("job-1", "crm", "dead", "reason")

    assert collector.bodies == []


def test_scrub_event_redacts_headers_cookies_vars_and_text() -> None:
    event = {
        "message": "refresh with password=hunter2 failed",
        "request": {"headers": {"Authorization": "Bearer abcdef123456", "Accept": "json"},
                    "cookies": {"session": "abc"}, "query_string": "token=abc&page=2"},
        "exception": {"values": [{"value": "Basic dXNlcjpwYXNz refused", "stacktrace": {
            "frames": [{"vars": {"client_secret": "'xyz'", "note": "'api_key: k-123'"}}]}}]},
        "extra": {"celery-job": {"kwargs": {"job": {"headers": {"X-Api-Key": "k-456"}}}}},
    }

    clean = json.dumps(scrub_event(event))

    for secret in ("hunter2", "abcdef123456", "dXNlcjpwYXNz", "xyz", "k-123", "k-456"):
        assert secret not in clean
    assert '"cookies": "[REDACTED]"' in clean
    assert '"Accept": "[REDACTED]"' in clean  # header names only, as every display
    assert "page=2" in clean
