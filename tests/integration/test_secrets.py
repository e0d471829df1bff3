"""Secrets end to end: what a job carries for the upstream reaches the upstream and nothing else.

Jobs carry `Authorization: Bearer <random>`, `X-Api-Key: <random>`, a `token=<random>` query
parameter and a body field `password: <random>`. Two are retried (a 503, a connection reset)
and then succeed; one is dead-lettered at once (400), one after three refused connections
(whose error messages quote the request URL, query string included). The worker runs with
Sentry pointed at a local collector and with debug logging. Afterwards no secret may appear in
any row of any audit table, the worker's log, the producer's logs, `recovery-cli dlq list` and
`dlq show`, any Redis key of the run (DLQ entries included, message bodies decoded), the broker
messages' argsrepr/kwargsrepr (read before a worker took them), the task events that Flower
shows, or the Sentry envelopes.

The second test carries every header, parameter and body key a denylist used to miss (issue 12)
through a dead letter and a replay, and also checks /metrics and the HTML report; the fields its
integration's `audit:` block lists (`max_tokens`, `order.amount`, `page`) are shown.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import structlog
from click.testing import CliRunner

import recovery
import recovery.cli.main
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from recovery.telemetry.logging import configure_logging
from tests.integration.test_job_flow import integration
from tests.integration.test_redis_restart import wait_until
from tests.integration.test_sentry import Collector
from tests.integration.test_worker_loss import wait_all


class Secrets:
    def __init__(self) -> None:
        self.bearer = f"bearer-{secrets.token_hex(12)}"
        self.api_key = f"apikey-{secrets.token_hex(12)}"
        self.token = f"qtoken-{secrets.token_hex(12)}"
        self.password = f"passwd-{secrets.token_hex(12)}"
        self.values = (self.bearer, self.api_key, self.token, self.password)

    def job(self, n: int) -> dict[str, Any]:
        return {"headers": {"Authorization": f"Bearer {self.bearer}", "X-Api-Key": self.api_key},
                "params": {"token": self.token, "page": str(n)},
                "json": {"password": self.password, "order": n}}

    def found_in(self, text: str) -> list[str]:
        return [value for value in self.values if value in text]


def decoded(raw: bytes) -> str:
    """A Redis value as text, with a kombu message's base64 body decoded alongside it."""
    text = raw.decode("utf-8", "replace")
    try:
        message = json.loads(text)
        body = base64.b64decode(message["body"]).decode("utf-8", "replace")
    except (ValueError, KeyError, TypeError, binascii.Error):
        return text
    return f"{text}\n{without_dlq_original(body)}"


def without_dlq_original(body: str) -> str:
    """A DLQ envelope keeps the job's payload for replay in `original` (plain JSON without
    RECOVERY_ENCRYPTION_KEYS, like a queued message; test_dlq_encryption checks it is a token
    with a key); everything else in the envelope must be free of secrets."""
    try:
        envelope = json.loads(body)
    except ValueError:
        return body
    if isinstance(envelope, dict) and "original" in envelope:
        return json.dumps({k: v for k, v in envelope.items() if k != "original"})
    return body


def redis_dump(client: redis.Redis, prefix: str) -> dict[str, str]:
    """Every key of the run with its value(s) as text, except the result store's
    (`result:*`): it keeps the upstream's answer for the producer, and the fault server's
    answer echoes the request, secrets included (encrypted with RECOVERY_ENCRYPTION_KEYS)."""
    dumped: dict[str, str] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        if key.decode().removeprefix(prefix).startswith("result:"):
            continue
        kind = client.type(key).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [k + b"=" + v for k, v in client.hgetall(key).items()]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [json.dumps({k.decode(): v.decode("utf-8", "replace")
                                  for k, v in fields.items()}).encode()
                      for _, fields in client.xrange(key)]
        dumped[key.decode()] = "\n".join(decoded(value) for value in values)
    return dumped


def audit_dump(database_url: str) -> dict[str, str]:
    """Every row of every table in the audit database, each row cast to text."""
    dumped = {}
    with psycopg.connect(database_url) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            rows = conn.execute(f'SELECT t::text FROM "{table}" t').fetchall()
            dumped[table] = "\n".join(row[0] for row in rows)
    return dumped


class EventTap:
    """Records every Celery event (what Flower shows) from a background receiver."""

    def __init__(self) -> None:
        from recovery.celery_app import app

        self.events: list[dict[str, Any]] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection,
                                             handlers={"*": self.events.append})
        self._ready = threading.Event()
        subscribed = self._receiver.on_consume_ready

        def on_consume_ready(*args: Any, **kwargs: Any) -> None:
            subscribed(*args, **kwargs)
            self._ready.set()

        self._receiver.on_consume_ready = on_consume_ready  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the event receiver did not start"

    def _run(self) -> None:
        for _ in self._receiver.consume(limit=None, timeout=None, safety_interval=0.2,
                                        wakeup=False):
            pass

    def stop(self) -> list[dict[str, Any]]:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._connection.release()
        return self.events


class SecretLeaked(AssertionError):
    """A secret value was found somewhere it must never be."""


@pytest.fixture
def sentry_collector() -> Iterator[Collector]:
    found = Collector()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize("log_level", ["info", "debug"])
def test_no_secret_leaves_the_call(
        log_level: str, configure, upstream: FaultServer, start_worker,
        redis_client: redis.Redis,
        database_url: str, sentry_collector: Collector, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, restore_structlog: None) -> None:
    rejecting = FaultServer(mode="5xx", status=400).start()
    gone = FaultServer().start()
    gone.down()  # connections to its port are refused
    try:
        secret = Secrets()
        dsn = f"http://publickey@127.0.0.1:{sentry_collector.port}/42"
        retry = {"max_attempts": 3, "initial_delay_ms": 200, "backoff_factor": 2,
                 "max_delay_ms": 1000, "jitter": 0}
        env = configure([integration(upstream.url, retry=retry),
                         integration(rejecting.url, id="strict"),
                         integration(gone.url, id="gone", retry=retry)],
                        SENTRY_DSN=dsn, LOG_LEVEL="debug", TASK_EVENTS="true")
        prefix = env["RECOVERY_REDIS_PREFIX"]
        upstream.set_script([503, "reset"])  # both first calls fail, every later one succeeds
        caplog.set_level(logging.DEBUG)
        configure_logging("debug", json=True)

        job_ids = [recovery.enqueue("shop", "POST", f"/orders/{n}", **secret.job(n))
                   for n in range(2)]
        job_ids.append(recovery.enqueue("strict", "POST", "/orders/9", **secret.job(9)))
        job_ids.append(recovery.enqueue("gone", "GET", "/orders/8", **secret.job(8)))
        queued = redis_client.lrange(f"{prefix}integrations", 0, -1)
        assert len(queued) == 4
        producer_logs = capsys.readouterr().err + caplog.text

        tap = EventTap()
        try:
            worker = start_worker(env, loglevel=log_level)
            done = wait_all(get_runtime().engine, job_ids, timeout=60)
        finally:
            events = tap.stop()
        assert [done[job_id]["status"] for job_id in job_ids] == ["succeeded", "succeeded",
                                                                  "dead", "dead"]
        firsts = sorted(str(done[job_id]["attempts"][0]["http_status"]) for job_id in job_ids[:2])
        assert firsts == ["503", "None"]
        refused = done[job_ids[3]]["attempts"]
        assert len(refused) == 3 and all("network" in a["error_categories"] for a in refused)
        assert "?token=[REDACTED]" in refused[0]["error_message"]  # the URL was quoted

        # The secrets really travelled: in the message bodies and to the upstream.
        for raw in queued:
            assert sorted(secret.found_in(decoded(raw))) == sorted(secret.values)
            headers = json.loads(raw)["headers"]
            assert headers["kwargsrepr"] and "[REDACTED]" in headers["kwargsrepr"]
            assert secret.found_in(json.dumps(headers)) == []
        sent = upstream.requests() + rejecting.requests()
        assert len(sent) == 5
        for request in sent:
            assert request["headers"]["Authorization"] == f"Bearer {secret.bearer}"
            assert request["headers"]["X-Api-Key"] == secret.api_key
            assert f"token={secret.token}" in request["path"]

        runner = CliRunner()
        listed = runner.invoke(recovery.cli.main.main, ["dlq", "list", "--json"])
        assert listed.exit_code == 0 and job_ids[2] in listed.output, listed.output
        shown = runner.invoke(recovery.cli.main.main, ["dlq", "show", job_ids[2], "--json"])
        assert shown.exit_code == 0 and job_ids[2] in shown.output, shown.output
        wait_until(lambda: all(job_id in "".join(sentry_collector.bodies)
                               for job_id in job_ids[2:]), "the dead jobs' Sentry events")
        worker.stop()
        places = {
            "worker log": worker.log_path.read_text(errors="replace"),
            "producer logs": producer_logs,
            "dlq list": listed.output, "dlq show": shown.output,
            "task events": json.dumps(events, default=str),
            "sentry": "\n".join(sentry_collector.bodies),
            **{f"audit table {name}": text for name, text in audit_dump(database_url).items()},
            **{f"redis key {name}": text
               for name, text in redis_dump(redis_client, prefix).items()},
        }
        leaks = {place: secret.found_in(text) for place, text in places.items()}
        leaks = {place: found for place, found in leaks.items() if found}
        if leaks:
            raise SecretLeaked(f"Secrets leaked into: {leaks}")
        assert any(event["type"] == "task-received" for event in events)
        assert any(key.endswith(":dlq") for key in places if key.startswith("redis key"))
    finally:
        rejecting.stop()
        gone.stop()


# --- every name a denylist missed (issue 12), through a dead letter and a replay ---------------

MISSED_HEADERS = ("Ocp-Apim-Subscription-Key", "X-Authorization", "Authentication",
                  "X-Access-Key", "Signature", "X-Hub-Signature-256")
MISSED_PARAMS = ("access_key", "sid", "session_id", "jwt", "pwd", "private_key")
MISSED_BODY_KEYS = ("pass", "passphrase", "auth", "credentials", "cvv2", "iban",
                    "client_assertion")
#: Keys that hold the job itself, legitimately: the work queue, the DLQ (the original request
#: for the worker and for replay) and kombu's hash of messages a worker holds unacknowledged.
#: Everything else under the prefix must hold no secret.
PAYLOAD_KEYS = ("integrations", "dlq", "unacked")
AUDIT = {"show_params": ["page"], "show_body_fields": ["max_tokens", "order.amount"]}


class EveryName:
    """A job carrying every missed name, each with its own unique secret value."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.headers = {name: self._secret(name) for name in MISSED_HEADERS}
        self.headers["Authorization"] = f"Token {self._secret('authorization')}"
        self.headers["X-Request-Id"] = "req-77"
        self.params = {name: self._secret(name) for name in MISSED_PARAMS} | {"page": "3"}
        self.body: dict[str, Any] = {key: self._secret(key) for key in MISSED_BODY_KEYS}
        self.body |= {"card": {"number": self._secret("card.number"), "exp": "12/30"},
                      "max_tokens": 7, "order": {"amount": 1250, "note": "gift"}}

    def _secret(self, name: str) -> str:
        self.values[name] = f"v-{secrets.token_hex(10)}"
        return self.values[name]

    def leaks(self, places: dict[str, str]) -> dict[str, list[str]]:
        found = {place: [name for name, value in self.values.items() if value in text]
                 for place, text in places.items()}
        return {place: names for place, names in found.items() if names}


def outside_the_payload(client: redis.Redis, prefix: str) -> dict[str, str]:
    return {f"redis key {name}": text for name, text in redis_dump(client, prefix).items()
            if name.removeprefix(prefix) not in PAYLOAD_KEYS}


def metrics_text(settings_env: dict[str, str]) -> str:
    """GET /metrics from the server `recovery-cli serve` runs."""
    import requests

    from recovery.config.settings import load_settings
    from recovery.ops.serve import build_server

    server, _ = build_server(load_settings(settings_env), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        answer = requests.get(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.text
    finally:
        server.shutdown()
        server.server_close()


def cli(*args: str) -> str:
    result = CliRunner().invoke(recovery.cli.main.main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def assert_names_and_allowed_values_only(kwargsrepr: str) -> None:
    """Names, a known Authorization scheme and the values the audit block lists; no others."""
    assert "'max_tokens': 7" in kwargsrepr and "'amount': 1250" in kwargsrepr
    assert "'page': '3'" in kwargsrepr and "gift" not in kwargsrepr
    assert "'Authorization': 'Token [REDACTED]'" in kwargsrepr
    assert all(f"'{name}': '[REDACTED]'" in kwargsrepr
               for name in (*MISSED_HEADERS, *MISSED_PARAMS, "X-Request-Id"))


def assert_travelled(sent: list[dict[str, Any]], job: EveryName) -> None:
    """The secrets really reached the upstream, in both calls before the dead letter."""
    assert [r["status"] for r in sent] == [500, 500, 200]
    for request in sent[:2]:
        for name in (*MISSED_HEADERS, "Authorization"):
            assert request["headers"][name] == job.headers[name]
        for name in MISSED_PARAMS:
            assert f"{name}={job.params[name]}" in request["path"]


def test_every_missed_name_stays_hidden_through_a_dead_letter_and_a_replay(
        configure, upstream: FaultServer, start_worker, redis_client: redis.Redis,
        database_url: str, sentry_collector: Collector, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, restore_structlog: None, tmp_path: Path) -> None:
    from recovery.dlq.replay import ReplayOptions, replay_dlq
    from recovery.dlq.store import EntryFilter
    from tests.integration.conftest import wait_for_status

    job = EveryName()
    retry = {"max_attempts": 2, "initial_delay_ms": 100, "backoff_factor": 2,
             "max_delay_ms": 1000, "jitter": 0}
    env = configure([integration(upstream.url, retry=retry, audit=AUDIT)],
                    SENTRY_DSN=f"http://publickey@127.0.0.1:{sentry_collector.port}/42",
                    LOG_LEVEL="debug", TASK_EVENTS="true")
    prefix = env["RECOVERY_REDIS_PREFIX"]
    upstream.set_mode("5xx", status=500)
    caplog.set_level(logging.DEBUG)
    configure_logging("debug", json=True)

    job_id = recovery.enqueue("shop", "POST", "/orders/1", json=job.body, params=job.params,
                              headers=job.headers, idempotency_key="order-1")
    (queued,) = redis_client.lrange(f"{prefix}integrations", 0, -1)
    kwargsrepr = json.loads(queued)["headers"]["kwargsrepr"]  # what Flower shows
    assert_names_and_allowed_values_only(kwargsrepr)
    tap = EventTap()
    try:
        worker = start_worker(env, loglevel="debug")
        engine = get_runtime().engine
        dead = wait_for_status(engine, job_id, {"dead"})
        assert dead["params"] == {**dict.fromkeys(MISSED_PARAMS, "[REDACTED]"), "page": "3"}
        wait_until(lambda: redis_client.llen(f"{prefix}dlq") == 1, "the dead letter")
        listed = cli("dlq", "list", "--json")
        shown = cli("dlq", "show", job_id, "--json")
        at_rest = outside_the_payload(redis_client, prefix)

        upstream.set_mode("ok")
        report = replay_dlq(get_runtime(), ReplayOptions(filter=EntryFilter(job_id=job_id)))
        assert report.summary()["replayed"] == 1
        assert wait_for_status(engine, job_id, {"succeeded"})["replay_count"] == 1
    finally:
        events = tap.stop()
    assert job_id in listed and '"max_tokens": 7' in shown and '"amount": 1250' in shown
    assert_travelled(upstream.requests(), job)
    wait_until(lambda: job_id in "".join(sentry_collector.bodies), "the dead job's Sentry event")
    html = tmp_path / "report.html"
    cli("report", "--since", "1h", "--html", str(html))
    worker.stop()
    places = {
        "worker log": worker.log_path.read_text(errors="replace"),
        "producer logs": capsys.readouterr().err + caplog.text,
        "dlq list": listed, "dlq show": shown, "flower kwargsrepr": kwargsrepr,
        "task events": json.dumps(events, default=str),
        "sentry": "\n".join(sentry_collector.bodies),
        "metrics": metrics_text(env), "html report": html.read_text(),
        **{f"audit table {name}": text for name, text in audit_dump(database_url).items()},
        **{f"{name} (at the dead letter)": text for name, text in at_rest.items()},
        **outside_the_payload(redis_client, prefix),
    }
    leaks = job.leaks(places)
    if leaks:
        raise SecretLeaked(f"Secrets leaked into: {leaks}")
    assert "shop" in places["html report"] and "/orders/1" in places["html report"]
    assert any(event["type"] == "task-received" for event in events)
    assert "audit table dead_letters" in places and "audit table attempts" in places
