"""A local HTTP upstream that misbehaves on demand, for tests, the demo and `recovery-cli simulate`.

Modes: ok (200 JSON echo), 5xx (default 503), 429 (with Retry-After), slow (delay, then 200),
reset (connection reset by RST), auth (401 unless a configured or issued bearer token is sent),
drip (200 whose body arrives one byte every `interval_ms`, `drip_bytes` in all), huge (200 with
a JSON string body of `size_bytes`, chunked, or with its Content-Length when `declare_length`);
`down()` closes the listener so connections are refused and `up()` reopens the same port. A
script of statuses (e.g. [503, 503, 200]; also "ok", "slow", "reset") is consumed one per request
before the mode applies again. `/health` follows the mode (auth excepted), not the script;
`POST /oauth/token` issues client-credentials tokens in every mode.

Control over HTTP, for a server in another process: POST /_control {"mode": "5xx", "status":
500, "script": [503, 200]} or {"mode": "down", "for_ms": 2000}; GET /_requests; GET /_stats;
POST /_reset. As a process: python -m recovery.demo.faultserver --port 8080
(SIGUSR1 down, SIGUSR2 up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MODES = ("ok", "5xx", "429", "slow", "reset", "auth", "drip", "huge", "down")
STREAMING_MODES = ("drip", "huge")
SCRIPT_WORDS = ("ok", "slow", "reset")
CONTROL_KEYS = ("mode", "status", "retry_after_s", "delay_ms", "token", "for_ms", "script",
                "revoke_tokens", "interval_ms", "drip_bytes", "size_bytes", "declare_length",
                "retry_after")
REDIRECT_TARGET = "http://redirect.invalid/moved"
_OPTION_KEYS = ("status", "retry_after_s", "delay_ms", "token", "interval_ms", "drip_bytes",
                "size_bytes", "declare_length", "retry_after")
_STREAM_PIECE = 64 * 1024
_NO_BODY = (204, 304)

ScriptItem = int | str


class FaultConfigError(ValueError):
    """A mode, option or script given to the fault server is not valid."""


@dataclass(frozen=True)
class Behaviour:
    """How the server answers API requests when no script entry is pending."""

    mode: str = "ok"
    status: int = 503  # the 5xx mode's status
    retry_after_s: int = 1  # the Retry-After of every 429
    delay_ms: int = 1000  # the slow mode's delay
    token: str | None = None  # the auth mode's accepted bearer token
    interval_ms: int = 200  # the drip mode's pause between bytes
    drip_bytes: int = 300  # the drip mode's body length (60 s at the default interval)
    size_bytes: int = 20 * 1024 * 1024  # the huge mode's body length
    declare_length: bool = False  # huge: send Content-Length instead of chunks
    retry_after: str | None = None  # 429: this Retry-After text as is (an HTTP date, a huge
    #                                  number) instead of retry_after_s


class FaultServer:
    """A ThreadingHTTPServer in a background thread with switchable failure modes."""

    _behaviour: Behaviour
    _script: deque[ScriptItem]
    _records: list[dict[str, Any]]
    _successes: Counter[str]
    _issued: set[str]
    _token_count: int

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, mode: str = "ok",
                 token_ttl_s: int = 3600, client_secret: str | None = None,
                 **options: Any) -> None:
        self.host, self.port = host, port
        self.token_ttl_s = token_ttl_s
        self.client_secret = client_secret  # when set, /oauth/token checks it
        self._initial = _behaviour(mode, options)
        self._lock = threading.Lock()
        self._listener_lock = threading.RLock()
        self._stopped = threading.Event()
        self._stopped.set()  # until start()
        self._server: _Server | None = None
        self._timer: threading.Timer | None = None
        self._clear()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def start(self) -> FaultServer:
        self._stopped.clear()
        self.up()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.down()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def up(self) -> None:
        """Listen (again) on the same port; a no-op while listening or before start()."""
        with self._listener_lock:
            self._cancel_timer()
            if self._server is not None or self._stopped.is_set():
                return
            server = _Server((self.host, self.port), self)
            self.port = server.server_address[1]
            self._server = server
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             name=f"faultserver-{self.port}", daemon=True).start()

    def down(self, for_ms: int | None = None, *, keep: socket.socket | None = None) -> None:
        """Stop listening and cut open connections (except `keep`); back up after `for_ms`."""
        with self._listener_lock:
            self._cancel_timer()
            server, self._server = self._server, None
            if server is not None:
                server.shutdown()
                server.server_close()
                server.drop_connections(keep)
            if for_ms is not None and not self._stopped.is_set():
                self._timer = threading.Timer(for_ms / 1000, self.up)
                self._timer.daemon = True
                self._timer.start()

    def set_mode(self, mode: str, *, for_ms: int | None = None, **options: Any) -> None:
        """Switch mode; options (status, retry_after_s, delay_ms, token, interval_ms, drip_bytes,
        size_bytes, declare_length) reset to defaults.

        "down" calls `down(for_ms)`; any other mode brings a stopped listener back up.
        """
        extra = {} if for_ms is None else {"for_ms": for_ms}
        self.configure({"mode": mode, **options, **extra})

    def set_script(self, items: Sequence[ScriptItem]) -> None:
        """Replace the pending script: statuses 200-599 or "ok"/"slow"/"reset", one a request."""
        self.configure({"script": items})

    def configure(self, payload: Mapping[str, Any], *, keep: socket.socket | None = None) -> None:
        """Apply a /_control payload, all or nothing; FaultConfigError says what was wrong."""
        unknown = sorted(set(payload) - set(CONTROL_KEYS))
        if unknown:
            allowed = ", ".join(CONTROL_KEYS)
            raise FaultConfigError(f"Unknown control keys {unknown}; use only {allowed}.")
        mode, for_ms = payload.get("mode"), payload.get("for_ms")
        options = {key: payload[key] for key in _OPTION_KEYS if key in payload}
        if (options or for_ms is not None) and mode is None:
            raise FaultConfigError("Options such as 'status' need a 'mode' in the same request.")
        if for_ms is not None and mode != "down":
            raise FaultConfigError("'for_ms' only applies to the mode 'down'.")
        if for_ms is not None:
            _check_int("for_ms", for_ms, 1, 3_600_000)
        behaviour = None
        if mode is not None and (mode != "down" or options):
            behaviour = _behaviour(mode, options)
        script = _checked_script(payload["script"]) if "script" in payload else None
        with self._lock:
            if script is not None:
                self._script = deque(script)
            if payload.get("revoke_tokens"):
                self._issued.clear()
            if behaviour is not None:
                self._behaviour = behaviour
        if mode == "down":
            self.down(for_ms, keep=keep)
        elif behaviour is not None:
            self.up()

    def revoke_tokens(self) -> None:
        """Forget every issued OAuth token, as if they had all expired."""
        with self._lock:
            self._issued.clear()

    def reset(self) -> None:
        """Back to the state at construction: initial mode, no script, no records or counts."""
        with self._lock:
            self._clear()

    def requests(self) -> list[dict[str, Any]]:
        """Every recorded request: n, method, path (with query), headers, body (text), time,
        idempotency_key, status (an int, "reset" or None while in flight) and peer."""
        with self._lock:
            return [dict(record) for record in self._records]

    def successes_by_key(self) -> dict[str, int]:
        """How many 2xx API responses each idempotency key received."""
        with self._lock:
            return dict(self._successes)

    def tokens_issued(self) -> int:
        with self._lock:
            return self._token_count

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self._behaviour.mode, "up": self.is_up,
                    "script_left": len(self._script), "requests": len(self._records),
                    "successes_by_key": dict(self._successes),
                    "tokens_issued": self._token_count}

    def _clear(self) -> None:
        self._behaviour = self._initial
        self._script = deque()
        self._records = []
        self._successes = Counter()
        self._issued = set()
        self._token_count = 0

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _record(self, method: str, path: str, headers: Mapping[str, str],
                peer: str, body: bytes = b"") -> dict[str, Any]:
        key = headers.get("Idempotency-Key") or headers.get("X-Idempotency-Key")
        with self._lock:
            record = {"n": len(self._records) + 1, "method": method, "path": path,
                      "headers": dict(headers), "time": time.time(), "idempotency_key": key,
                      "status": None, "peer": peer, "body": body.decode("utf-8", "replace")}
            self._records.append(record)
        return record

    def _streaming(self, route: str) -> Behaviour | None:
        """The behaviour when the answer to `route` is a drip or huge body, else None."""
        with self._lock:
            behaviour = self._behaviour
        return behaviour if behaviour.mode in STREAMING_MODES and route != "/health" else None

    def _decide(self, route: str, authorization: str | None) -> tuple[int | None, float]:
        """(status or None for a reset, delay in seconds) for one API or health request."""
        health = route == "/health"
        with self._lock:
            behaviour = self._behaviour
            item = self._script.popleft() if self._script and not health else None
            authorised = self._authorised(behaviour, authorization)
        if item is None:
            if behaviour.mode == "auth" and not health and not authorised:
                return 401, 0.0
            item = {"5xx": behaviour.status, "429": 429}.get(behaviour.mode, behaviour.mode)
        if item == "reset":
            return None, 0.0
        if item == "slow":
            return 200, behaviour.delay_ms / 1000
        return (200 if item in ("ok", "auth", *STREAMING_MODES) else int(item)), 0.0

    def _authorised(self, behaviour: Behaviour, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return token.strip() == behaviour.token or token.strip() in self._issued

    def _finish(self, record: dict[str, Any], status: int | None, counted: bool) -> None:
        with self._lock:
            record["status"] = "reset" if status is None else status
            key = record["idempotency_key"]
            if counted and key and status is not None and 200 <= status < 300:
                self._successes[key] += 1

    def _issue_token(self, form: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type", [""])[0] != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        secret = form.get("client_secret", [""])[0]
        if self.client_secret is not None and secret != self.client_secret:
            return 401, {"error": "invalid_client"}
        with self._lock:
            self._token_count += 1
            token = f"tok-{self._token_count}-{secrets.token_hex(8)}"
            self._issued.add(token)
        return 200, {"access_token": token, "token_type": "Bearer",
                     "expires_in": self.token_ttl_s}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a pool of 64+ threads connecting at once
    # would see SYNs dropped and retried a second later, which is not what we simulate.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fault: FaultServer) -> None:
        self.fault = fault
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self, keep: socket.socket | None) -> None:
        with self.connections_lock:
            doomed = [sock for sock in self.connections if sock is not keep]
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every kept-alive response waits ~40 ms for an ACK
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._reply(400, {"error": "Send the body with a valid Content-Length (not chunked)."})
            return
        fault = self.server.fault
        route = urlsplit(self.path).path
        if route.startswith("/_"):
            self._control(fault, route, body)
            return
        peer = "{}:{}".format(*self.client_address[:2])
        record = fault._record(self.command, self.path, dict(self.headers.items()), peer, body)
        if route == "/oauth/token" and self.command == "POST":
            code, payload = fault._issue_token(parse_qs(body.decode("utf-8", "replace")))
            fault._finish(record, code, counted=False)
            self._reply(code, payload)
            return
        status: int | None
        status, delay_s = fault._decide(route, self.headers.get("Authorization"))
        if delay_s and fault._stopped.wait(delay_s):
            status = None
        fault._finish(record, status, counted=route != "/health")
        streaming = fault._streaming(route) if status == 200 else None
        if status is None:
            self._reset_connection()
        elif streaming is not None and self.command != "HEAD":
            self._stream(fault, streaming)
        else:
            self._reply(status, self._payload(status, route, record, body),
                        self._extra_headers(status, fault))

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _control(self, fault: FaultServer, route: str, body: bytes) -> None:
        if (self.command, route) == ("GET", "/_requests"):
            self._reply(200, fault.requests())
        elif (self.command, route) == ("GET", "/_stats"):
            self._reply(200, fault.stats())
        elif (self.command, route) == ("POST", "/_reset"):
            fault.reset()
            self._reply(200, fault.stats())
        elif (self.command, route) == ("POST", "/_control"):
            try:
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise FaultConfigError("The control body must be a JSON object.")
                fault.configure(payload, keep=self.connection)
            except (ValueError, TypeError) as exc:  # FaultConfigError and bad JSON
                self._reply(400, {"error": str(exc)})
                return
            self.close_connection = not fault.is_up
            self._reply(200, fault.stats())
        else:
            self._reply(404, {"error": f"No control endpoint {self.command} {route}."})

    def _payload(self, status: int, route: str, record: Mapping[str, Any], body: bytes) -> Any:
        if 200 <= status < 300 and route == "/health":
            return {"status": "ok"}
        if 200 <= status < 300:
            return {"ok": True, "path": self.path, "method": self.command,
                    "idempotency_key": record["idempotency_key"], "n": record["n"],
                    "json": _json_or_none(body)}
        return {"error": self.responses.get(status, ("Error",))[0], "status": status}

    def _extra_headers(self, status: int, fault: FaultServer) -> dict[str, str]:
        if status == 429:
            behaviour = fault._behaviour
            return {"Retry-After": behaviour.retry_after or str(behaviour.retry_after_s)}
        if status == 401:
            return {"WWW-Authenticate": 'Bearer realm="faultserver"'}
        if 300 <= status < 400:
            return {"Location": REDIRECT_TARGET}
        return {}

    def _reply(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = b"" if status in _NO_BODY else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status not in _NO_BODY:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _stream(self, fault: FaultServer, behaviour: Behaviour) -> None:
        """A drip or huge 200; a client that hangs up ends it (and the connection) quietly."""
        self.close_connection = True
        try:
            if behaviour.mode == "drip":
                self._drip(fault, behaviour)
            else:
                self._huge(fault, behaviour)
        except OSError:  # the client gave up: exactly what these modes provoke
            return

    def _drip(self, fault: FaultServer, behaviour: Behaviour) -> None:
        total = max(behaviour.drip_bytes, 2)
        body = b" " * (total - 2) + b"{}"  # leading spaces keep the finished body valid JSON
        self._stream_headers({"Content-Length": str(total)})
        for index in range(total):
            if fault._stopped.wait(behaviour.interval_ms / 1000):
                return
            self.wfile.write(body[index:index + 1])
            self.wfile.flush()

    def _huge(self, fault: FaultServer, behaviour: Behaviour) -> None:
        size = max(behaviour.size_bytes, 2)
        declared = behaviour.declare_length
        self._stream_headers({"Content-Length": str(size)} if declared
                             else {"Transfer-Encoding": "chunked"})
        sent = 0
        while sent < size and not fault._stopped.is_set():
            piece = min(_STREAM_PIECE, size - sent)
            data = (b'"' + b"x" * (piece - 1)) if sent == 0 else b"x" * piece
            if sent + piece == size:
                data = data[:-1] + b'"'  # the whole body is one JSON string
            self.wfile.write(data if declared else b"%x\r\n%s\r\n" % (len(data), data))
            sent += piece
        if not declared:
            self.wfile.write(b"0\r\n\r\n")

    def _stream_headers(self, headers: Mapping[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()

    def _reset_connection(self) -> None:
        """Close with SO_LINGER 0, so the client sees a reset rather than an orderly close."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the socket only really closes once its file objects are closed
        self.connection.close()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ValueError("chunked request bodies are not supported")
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""


def _behaviour(mode: str, options: Mapping[str, Any]) -> Behaviour:
    if mode == "down":
        raise FaultConfigError("The mode 'down' takes no response options, only 'for_ms'.")
    if mode not in MODES:
        raise FaultConfigError(f"Unknown fault mode {mode!r}; use one of {', '.join(MODES)}.")
    unknown = sorted(set(options) - set(_OPTION_KEYS))
    if unknown:
        raise FaultConfigError(f"Unknown options {unknown}; use {', '.join(_OPTION_KEYS)}.")
    behaviour = replace(Behaviour(mode=mode), **options)
    _check_int("status", behaviour.status, 400, 599)
    _check_int("retry_after_s", behaviour.retry_after_s, 0, 86_400)
    _check_int("delay_ms", behaviour.delay_ms, 0, 600_000)
    _check_int("interval_ms", behaviour.interval_ms, 1, 60_000)
    _check_int("drip_bytes", behaviour.drip_bytes, 2, 1_000_000)
    _check_int("size_bytes", behaviour.size_bytes, 2, 1024 ** 3)
    if behaviour.retry_after is not None and (
            not isinstance(behaviour.retry_after, str) or not behaviour.retry_after.isprintable()
            or not behaviour.retry_after.strip()):
        raise FaultConfigError("'retry_after' must be a non-empty line of text, e.g. "
                               "'Wed, 21 Oct 2125 07:28:00 GMT'.")
    if not isinstance(behaviour.declare_length, bool):
        raise FaultConfigError("'declare_length' must be true or false.")
    if behaviour.token is not None and (not isinstance(behaviour.token, str)
                                        or not behaviour.token.strip()):
        raise FaultConfigError("'token' must be a non-empty string.")
    return behaviour


def _checked_script(items: Sequence[ScriptItem]) -> list[ScriptItem]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise FaultConfigError("'script' must be a list such as [503, 503, 200].")
    for item in items:
        if isinstance(item, str):
            if item not in SCRIPT_WORDS:
                raise FaultConfigError(
                    f"Script entry {item!r} is not valid; use a status or one of {SCRIPT_WORDS}."
                )
        else:
            _check_int("a script status", item, 200, 599)
    return list(items)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultConfigError(f"{name} must be a whole number {low}-{high}, got {value!r}.")


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> None:
    """Run a fault server in this process until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m recovery.demo.faultserver",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--mode", default="ok", choices=[m for m in MODES if m != "down"])
    args = parser.parse_args(argv)
    server = FaultServer(args.host, args.port, mode=args.mode).start()
    finished = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: finished.set())
    signal.signal(signal.SIGINT, lambda *_: finished.set())
    signal.signal(signal.SIGUSR1, lambda *_: server.down())
    signal.signal(signal.SIGUSR2, lambda *_: server.up())
    print(f"Fault server listening on {server.url}", flush=True)
    while not finished.wait(0.2):
        pass
    server.stop()


if __name__ == "__main__":
    main()
