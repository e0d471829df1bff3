"""`recovery-cli serve`: the health and metrics endpoint for load balancers and Prometheus.

    GET /health   200 {"status": "ok", ...} when Redis and the database answer, else 503 with
                  `failed` naming which did not; the errors themselves go to the log only
                  (they can carry host names, user names and library internals)
    GET /metrics  Prometheus text: what every worker recorded (kept in Redis) plus breaker
                  states and queue depths read at scrape time; 404 when METRICS_ENABLED=false,
                  503 when the stored metrics cannot be read

With SERVE_TOKEN set, every request must carry `Authorization: Bearer <token>` (compared in
constant time) or gets 401.

SIGTERM or SIGINT stops accepting connections, lets requests in flight finish, and exits 0.
"""

from __future__ import annotations

import hmac
import json
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import click
import redis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, text

from recovery.audit.db import make_engine, normalise_url
from recovery.config import redis_urls
from recovery.config.broker import all_queue_depths
from recovery.config.loader import load_registry
from recovery.config.settings import Settings
from recovery.core.redact import redact_text
from recovery.engine.runtime import Runtime, build_runtime
from recovery.state.connection import redis_client
from recovery.telemetry import exposition, metrics

log = structlog.get_logger(__name__)

CHECK_TIMEOUT_S = 3
DEFAULT_PORT = 9808
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

Check = tuple[str, Callable[[], None]]


def redis_check(url: str) -> Check:
    client = redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S,
                                  socket_timeout=CHECK_TIMEOUT_S) if (
        redis_urls.kind_of(url) == "single") else redis_client(url)  # Cluster, Sentinel
    return "redis", lambda: _ping(client)


def _ping(client: redis.Redis) -> None:
    client.ping()


def database_check(url: str) -> tuple[Check, Engine]:
    """A `SELECT 1` on a small engine of its own, named after the backend (postgresql, sqlite)."""
    parsed = normalise_url(url)
    name = parsed.get_backend_name()
    if name == "postgresql" and "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(CHECK_TIMEOUT_S)})
    engine = make_engine(parsed.render_as_string(hide_password=False))

    def select_one() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    return (name, select_one), engine


def run_checks(checks: Sequence[Check]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the health endpoint. A failed check is named, its error logged."""
    results: dict[str, dict[str, Any]] = {}
    for name, check in checks:
        clock = time.perf_counter()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:
            log.warning("serve_health_check_failed", check=name, error_type=type(exc).__name__,
                        error=redact_text(str(exc).strip())[:300])
            results[name] = {"ok": False}
        results[name]["latency_ms"] = int((time.perf_counter() - clock) * 1000)
    failed = [name for name, result in results.items() if not result["ok"]]
    body: dict[str, Any] = {"status": "unavailable" if failed else "ok", "checks": results}
    if failed:
        body["failed"] = failed
        body["message"] = (f"{' and '.join(failed)} did not answer; the error is in the log of "
                           "recovery-cli serve.")
    return (503 if failed else 200), body


def bearer_matches(header: str | None, token: str) -> bool:
    """True when an Authorization header carries `Bearer <token>` (compared in constant time)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@dataclass
class Service:
    """What the handler needs; `metrics` is None when metrics are turned off, `token` when
    SERVE_TOKEN is not set."""

    checks: Sequence[Check]
    metrics: Callable[[], bytes] | None
    token: str | None = None


class _Handler(BaseHTTPRequestHandler):
    server: ServeServer
    # HTTP/1.0: one request per connection, so no idle keep-alive connection can hold up a
    # graceful stop; `timeout` bounds a client that connects and sends nothing.
    protocol_version = "HTTP/1.0"
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0]
        service = self.server.service
        if not self._authorised():
            return
        if route == "/health":
            status, body = run_checks(service.checks)
            self._send(status, json.dumps(body).encode(), "application/json")
        elif route == "/metrics" and service.metrics is not None:
            self._metrics(service.metrics)
        elif route == "/metrics":
            self._json(404, "Metrics are turned off (METRICS_ENABLED=false); set "
                            "METRICS_ENABLED=true to expose them.")
        else:
            self._json(404, f"There is nothing at {route!r}; use /health or /metrics.")

    def _metrics(self, render: Callable[[], bytes]) -> None:
        try:
            body = render()
        except Exception as exc:
            log.warning("metrics_render_failed", error_type=type(exc).__name__,
                        error=redact_text(str(exc))[:300])
            self._json(503, "The metrics could not be read from Redis; the error is in the log "
                            "of recovery-cli serve, and /health says which dependency is down.")
            return
        self._send(200, body, CONTENT_TYPE_LATEST)

    def do_POST(self) -> None:
        if self._authorised():
            self._json(405, "Only GET is supported; use GET /health or GET /metrics.")

    def _authorised(self) -> bool:
        """Answer 401 and return False when a token is set and the request lacks it."""
        token = self.server.service.token
        if token is None or bearer_matches(self.headers.get("Authorization"), token):
            return True
        self._json(401, "This endpoint needs the header 'Authorization: Bearer <token>' with the "
                        "token set in SERVE_TOKEN; send it with the request.",
                   {"WWW-Authenticate": 'Bearer realm="api-recovery"'})
        return False

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _json(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ServeServer(ThreadingHTTPServer):
    """Joins request threads on close, so shutdown lets requests in flight finish."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], service: Service) -> None:
        self.service = service
        super().__init__(address, _Handler)


def metrics_source(settings: Settings, rt: Runtime) -> Callable[[], bytes] | None:
    """Renders /metrics from the shared store and live breaker/queue state."""
    if not settings.metrics_enabled:
        return None
    store = metrics.store_for(rt.redis, settings.redis_key_prefix)

    def breaker_states() -> dict[str, str]:
        return {i.id: rt.breaker(i).snapshot().state for i in rt.registry}

    live = exposition.LiveStateCollector(breaker_states, lambda: broker_queue_depths(rt))
    return lambda: exposition.render(store, live)


def broker_queue_depths(rt: Runtime) -> dict[str, int]:
    """Messages waiting in each of our queues (work queues on the broker, DLQ-side lists in
    the state store: `recovery.config.broker`)."""
    return all_queue_depths(rt.settings, rt.redis)


def build_server(settings: Settings, host: str, port: int) -> tuple[ServeServer, list[Engine]]:
    """The server and the engines to dispose of when it stops."""
    (db_name, db_probe), engine = database_check(settings.database_url)
    rt = build_runtime(settings, load_registry(settings), redis_client(settings.redis_url))
    service = Service(checks=[redis_check(settings.redis_url), (db_name, db_probe)],
                      metrics=metrics_source(settings, rt), token=settings.serve_token)
    return ServeServer((host, port), service), [engine, rt.engine]


def serve(settings: Settings, host: str, port: int,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully. Call from the main thread."""
    server, engines = build_server(settings, host, port)
    stopping = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("serve_stopping", signal=signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                            name="serve", daemon=True)
    loop.start()
    address = f"http://{host}:{server.server_address[1]}"
    log.info("serve_started", address=address, token_required=settings.serve_token is not None)
    if settings.serve_token is None and host not in _LOOPBACK:
        log.warning("serve_unauthenticated", address=address,
                    advice="set SERVE_TOKEN, or publish the port on 127.0.0.1 only")
    if on_ready is not None:
        on_ready(address)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        for engine in engines:
            engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("serve_stopped", address=address)


@click.command("serve")
@click.option("--host", default=None,
              help="Address to listen on (0.0.0.0 in a container). Default: SERVE_HOST, "
                   "else 127.0.0.1.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help=f"Port to listen on; 0 picks a free one. Default: SERVE_PORT, else "
                   f"{DEFAULT_PORT}.")
def serve_command(host: str | None, port: int | None) -> None:
    """Serve /health (Redis and database) and /metrics (Prometheus) until SIGTERM/SIGINT.

    With SERVE_TOKEN set, both require 'Authorization: Bearer <token>'; set it whenever the
    port is reachable from other hosts.

    \b
    Example:
      SERVE_TOKEN=$(openssl rand -hex 32) recovery-cli serve --host 0.0.0.0 --port 9808
      curl -s -H "Authorization: Bearer $SERVE_TOKEN" localhost:9808/health
    """
    # Imported when serving starts: `recovery-cli --help` imports this module.
    from recovery.config.settings import get_settings
    from recovery.telemetry.sentry import init_sentry

    settings = get_settings()
    init_sentry(settings)
    host = settings.serve_host if host is None else host
    port = settings.serve_port if port is None else port
    try:
        serve(settings, host, port,
              on_ready=lambda address: click.echo(f"Serving /health and /metrics on {address}"))
    except OSError as exc:
        click.echo(f"Error: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another "
                   "--port or stop what uses it.", err=True)
        raise SystemExit(1) from exc
