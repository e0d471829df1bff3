"""`recovery-cli serve`: /health against real Redis and PostgreSQL, /metrics from what other
processes recorded, and a graceful stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml
from kombu import Queue
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from recovery.config.settings import Settings, load_settings
from recovery.engine.runtime import get_runtime
from recovery.ops.serve import ServeServer, Service, build_server

REPO = Path(__file__).resolve().parents[2]
# What `recovery-cli serve` runs: logging set up as the CLI group does, then the command.
SERVE = [sys.executable, "-c", "from recovery.telemetry.logging import configure_logging; "
         "configure_logging('info'); from recovery.ops.serve import serve_command; serve_command()"]
RECORD = """
from recovery.telemetry.metrics import observe_call, observe_recovery, observe_retry_scheduled
observe_call("crm", "GET", "/orders/7", 503, 0.7)
observe_recovery("server-error-circuit", False)
observe_retry_scheduled("crm", "backoff")
"""


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def running(database_url: str) -> Iterator[Callable[..., str]]:
    """Start an in-process server for given settings overrides; returns its base URL."""
    servers: list[ServeServer] = []

    def start(**env: str) -> str:
        settings = load_settings({"DATABASE_URL": database_url,
                                  "REDIS_URL": os.environ["REDIS_URL"], **env})
        server, _ = build_server(settings, "127.0.0.1", 0)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_serve_process_reports_health_and_the_metrics_of_other_processes(
    configure: Callable[..., dict[str, str]], redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = configure([{"id": "crm", "base_url": "http://127.0.0.1:9"}])
    subprocess.run([sys.executable, "-c", RECORD], env=env, cwd=REPO, check=True, timeout=60)
    _park_one_dead_letter()
    get_runtime().breaker(get_runtime().registry.get("crm")).force_open("test")
    stderr = (tmp_path / "serve.err").open("wb")
    serve = subprocess.Popen([*SERVE, "--port", "0"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline().decode()
        assert line.startswith("Serving /health and /metrics on http://127.0.0.1:"), line
        base = line.rsplit(" ", 1)[1].strip()

        health = requests.get(f"{base}/health", timeout=10)
        scraped = requests.get(f"{base}/metrics", timeout=10)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
        stderr.close()

    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert set(health.json()["checks"]) == {"redis", "postgresql"}
    assert scraped.status_code == 200
    assert scraped.headers["Content-Type"].startswith("text/plain")
    values = metric_values(scraped.text)
    assert values[("api_calls_total", (("endpoint", "/orders/:id"), ("integration", "crm"),
                                       ("method", "GET"), ("status", "503")))] == 1
    assert values[("error_recovery_attempts_total",
                   (("strategy", "server-error-circuit"), ("success", "false")))] == 1
    assert values[("retries_scheduled_total",
                   (("integration", "crm"), ("source", "backoff")))] == 1
    assert values[("circuit_breaker_state", (("integration", "crm"),))] == 1
    assert values[("dlq_depth", ())] == 1
    assert serve.returncode == 0
    assert "serve_stopped" in (tmp_path / "serve.err").read_text()


def _park_one_dead_letter() -> None:
    from recovery.celery_app import DLQ_QUEUE, app

    with app.producer_or_acquire() as producer:
        producer.publish({"kind": "test"}, exchange="", routing_key=DLQ_QUEUE,
                         declare=[Queue(DLQ_QUEUE, routing_key=DLQ_QUEUE)], serializer="json")


def test_health_is_503_naming_redis_without_its_error_text(
    running: Callable[..., str],
) -> None:
    base = running(REDIS_URL="redis://127.0.0.1:1/0")

    with capture_logs() as logs:
        response = requests.get(f"{base}/health", timeout=20)

    body = response.json()
    assert response.status_code == 503
    assert body["failed"] == ["redis"]
    assert body["status"] == "unavailable"
    assert body["checks"]["postgresql"]["ok"] is True
    assert set(body["checks"]["redis"]) == {"ok", "latency_ms"}
    assert body["message"] == "redis did not answer; the error is in the log of recovery-cli serve."
    for leak in ("Error", "refused", "127.0.0.1", "Connect", "errno"):
        assert leak not in response.text
    [logged] = [e for e in logs if e["event"] == "serve_health_check_failed"]
    assert logged["check"] == "redis" and logged["error_type"] == "ConnectionError"
    assert "127.0.0.1:1" in logged["error"]


def test_health_is_503_naming_postgresql_without_its_error_or_password(
    running: Callable[..., str],
) -> None:
    base = running(DATABASE_URL="postgresql://postgres:hunter2secret@127.0.0.1:1/nothing")

    response = requests.get(f"{base}/health", timeout=20)

    assert response.status_code == 503
    assert response.json()["failed"] == ["postgresql"]
    assert response.json()["checks"]["redis"]["ok"] is True
    assert set(response.json()["checks"]["postgresql"]) == {"ok", "latency_ms"}
    for leak in ("hunter2secret", "psycopg", "OperationalError", "127.0.0.1", "connection"):
        assert leak not in response.text


def test_metrics_can_be_turned_off(running: Callable[..., str]) -> None:
    base = running(METRICS_ENABLED="false")

    response = requests.get(f"{base}/metrics", timeout=10)

    assert response.status_code == 404
    assert "METRICS_ENABLED=false" in response.json()["error"]


def test_other_paths_and_methods_are_refused_with_a_sentence(
    running: Callable[..., str],
) -> None:
    base = running()

    missing = requests.get(f"{base}/nope", timeout=10)
    posted = requests.post(f"{base}/health", timeout=10)

    assert missing.status_code == 404
    assert "use /health or /metrics" in missing.json()["error"]
    assert posted.status_code == 405


def test_closing_the_server_lets_a_request_in_flight_finish() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_check() -> None:
        entered.set()
        release.wait(10)

    server = ServeServer(("127.0.0.1", 0), Service(checks=[("slow", slow_check)], metrics=None))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    answers: list[Any] = []
    client = threading.Thread(target=lambda: answers.append(requests.get(
        f"http://127.0.0.1:{server.server_address[1]}/health", timeout=20)))
    client.start()
    assert entered.wait(10)

    server.shutdown()
    closer = threading.Thread(target=server.server_close)
    closer.start()
    closer.join(0.3)
    still_waiting = closer.is_alive()
    release.set()
    closer.join(10)
    client.join(10)

    assert still_waiting
    assert not closer.is_alive()
    assert answers[0].status_code == 200
    assert json.loads(answers[0].text)["checks"]["slow"]["ok"] is True


def test_build_server_checks_the_configured_database_backend(tmp_path: Path) -> None:
    settings: Settings = load_settings({"DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}",
                                        "REDIS_URL": os.environ["REDIS_URL"]})
    server, engines = build_server(settings, "127.0.0.1", 0)
    try:
        assert [name for name, _ in server.service.checks] == ["redis", "sqlite"]
    finally:
        server.server_close()
        for engine in engines:
            engine.dispose()


def test_metrics_are_503_with_a_sentence_when_redis_does_not_answer(
    running: Callable[..., str],
) -> None:
    base = running(REDIS_URL="redis://127.0.0.1:1/0")

    response = requests.get(f"{base}/metrics", timeout=30)

    assert response.status_code == 503
    assert response.json()["error"] == (
        "The metrics could not be read from Redis; the error is in the log of recovery-cli "
        "serve, and /health says which dependency is down.")


TOKEN = "t0k3n-0123456789abcdef"
NEEDS_TOKEN = ("This endpoint needs the header 'Authorization: Bearer <token>' with the token set "
               "in SERVE_TOKEN; send it with the request.")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
     f"Token {TOKEN}", TOKEN, "Bearer " + "A" * len(TOKEN)],
)
def test_with_serve_token_every_request_without_it_gets_401(
    running: Callable[..., str], authorization: str | None,
) -> None:
    base = running(SERVE_TOKEN=TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}

    answers = [requests.get(f"{base}/health", headers=headers, timeout=10),
               requests.get(f"{base}/metrics", headers=headers, timeout=10),
               requests.get(f"{base}/elsewhere", headers=headers, timeout=10),
               requests.post(f"{base}/health", headers=headers, timeout=10)]

    for response in answers:
        assert response.status_code == 401
        assert response.json() == {"error": NEEDS_TOKEN}
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="api-recovery"'
        assert "checks" not in response.text and "api_calls" not in response.text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_with_serve_token_the_bearer_token_opens_health_and_metrics(
    running: Callable[..., str], scheme: str,
) -> None:
    base = running(SERVE_TOKEN=TOKEN)
    headers = {"Authorization": f"{scheme} {TOKEN}"}

    health = requests.get(f"{base}/health", headers=headers, timeout=10)
    scraped = requests.get(f"{base}/metrics", headers=headers, timeout=10)
    posted = requests.post(f"{base}/health", headers=headers, timeout=10)

    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert scraped.status_code == 200
    assert scraped.headers["Content-Type"].startswith("text/plain")
    assert posted.status_code == 405


def test_the_compose_healthcheck_sends_the_token_when_one_is_set(
    running: Callable[..., str],
) -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    command = compose["services"]["serve"]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    base = running(SERVE_TOKEN=TOKEN)
    snippet = command[3].replace("http://127.0.0.1:9808", base)
    assert snippet != command[3]
    clean = {k: v for k, v in os.environ.items() if k != "SERVE_TOKEN"}

    with_token = subprocess.run([sys.executable, "-c", snippet],
                                env={**clean, "SERVE_TOKEN": TOKEN}, capture_output=True,
                                timeout=30)
    without = subprocess.run([sys.executable, "-c", snippet], env=clean, capture_output=True,
                             timeout=30)

    assert with_token.returncode == 0, with_token.stderr
    assert without.returncode != 0
    assert b"401" in without.stderr


def test_metrics_reflect_what_a_real_worker_did(
    configure: Callable[..., dict[str, str]], upstream: Any, start_worker: Any,
    running: Callable[..., str],
) -> None:
    from recovery.engine.producer import enqueue
    from tests.integration.conftest import wait_for_status
    from tests.integration.test_job_flow import integration

    env = configure([integration(upstream.url)])
    upstream.set_script([503, 200])
    start_worker(env, concurrency=1)
    job_id = enqueue("shop", "GET", "/orders/42")
    assert wait_for_status(get_runtime().engine, job_id, {"succeeded"})["status"] == "succeeded"
    base = running(RECOVERY_REDIS_PREFIX=env["RECOVERY_REDIS_PREFIX"])
    deadline = time.monotonic() + 10  # workers send their counts at least once a second
    while True:
        values = metric_values(requests.get(f"{base}/metrics", timeout=10).text)
        calls = {dict(labels)["status"]: value for (name, labels), value in values.items()
                 if name == "api_calls_total" and dict(labels)["integration"] == "shop"}
        if calls == {"503": 1, "200": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert calls == {"503": 1, "200": 1}
    retries = ("retries_scheduled_total", (("integration", "shop"), ("source", "backoff")))
    assert values[retries] == 1
    assert values[("error_recovery_attempts_total",
                   (("strategy", "server-error-circuit"), ("success", "true")))] == 1
    assert values[("api_call_duration_seconds_count",
                   (("endpoint", "/orders/:id"), ("integration", "shop"), ("method", "GET")))] == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("short-secret", "SERVE_TOKEN must be 16 to 256 characters long, got one of 12 characters "
         "(not shown: it is a secret); generate one with `openssl rand -hex 32`."),
        ("secret with spaces in it", "SERVE_TOKEN may hold only letters, digits and -._~+/=, got "
         "other characters (not shown: it is a secret); generate one with `openssl rand -hex 32`."),
        ("secret-\u00e9-0123456789", "SERVE_TOKEN may hold only letters, digits and -._~+/=, got "
         "other characters (not shown: it is a secret); generate one with `openssl rand -hex 32`."),
    ],
)
def test_a_bad_serve_token_is_refused_at_start_without_showing_it(value: str, message: str) -> None:
    from recovery.config.settings import SettingsError

    with pytest.raises(SettingsError) as caught:
        load_settings({"SERVE_TOKEN": value})
    assert str(caught.value) == message
    assert load_settings({"SERVE_TOKEN": "  "}).serve_token is None
    assert load_settings({"SERVE_TOKEN": TOKEN}).serve_token == TOKEN


def test_serve_warns_when_it_listens_beyond_loopback_without_a_token(
    configure: Callable[..., dict[str, str]], tmp_path: Path,
) -> None:
    env = configure([{"id": "crm", "base_url": "http://127.0.0.1:9"}])
    stderr_path = tmp_path / "serve.err"
    with stderr_path.open("wb") as stderr:
        serve = subprocess.Popen([*SERVE, "--host", "0.0.0.0", "--port", "0"], env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=stderr)
        try:
            assert serve.stdout is not None
            assert serve.stdout.readline().startswith(b"Serving /health and /metrics on ")
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=30)
    logged = stderr_path.read_text()
    assert "serve_unauthenticated" in logged
    assert "set SERVE_TOKEN, or publish the port on 127.0.0.1 only" in logged
