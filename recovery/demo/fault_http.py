"""The HTTP side of the fault server (`recovery.demo.faultserver`): the listener, and the
handler that turns each request into what the server's state decides (a status, a delay, a
reset, a drip or huge body) or into a /_control call."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from recovery.demo.fault_modes import Behaviour, FaultConfigError

if TYPE_CHECKING:
    from recovery.demo.faultserver import FaultServer

REDIRECT_TARGET = "http://redirect.invalid/moved"
_STREAM_PIECE = 64 * 1024
_NO_BODY = (204, 304)


class FaultHTTPServer(ThreadingHTTPServer):
    """The listener of one `FaultServer.up()`; it keeps its open connections, so `down()` can
    cut them."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a pool of 64+ threads connecting at once
    # would see SYNs dropped and retried a second later, which is not what we simulate.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fault: FaultServer) -> None:
        self.fault = fault
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, FaultHandler)

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


class FaultHandler(BaseHTTPRequestHandler):
    """One connection's requests: API calls answered as the `FaultServer` decides, /_control
    calls applied to it."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every kept-alive response waits ~40 ms for an ACK
    server: FaultHTTPServer

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
        record = fault.record_request(self.command, self.path, dict(self.headers.items()), peer,
                                      body)
        if route == "/oauth/token" and self.command == "POST":
            code, payload = fault.issue_token(parse_qs(body.decode("utf-8", "replace")))
            fault.finish_request(record, code, counted=False)
            self._reply(code, payload)
            return
        status: int | None
        status, delay_s = fault.decide(route, self.headers.get("Authorization"))
        if delay_s and fault.wait_stopped(delay_s):
            status = None
        fault.finish_request(record, status, counted=route != "/health")
        streaming = fault.streaming(route) if status == 200 else None
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
            behaviour = fault.behaviour
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
            if fault.wait_stopped(behaviour.interval_ms / 1000):
                return
            self.wfile.write(body[index:index + 1])
            self.wfile.flush()

    def _huge(self, fault: FaultServer, behaviour: Behaviour) -> None:
        size = max(behaviour.size_bytes, 2)
        declared = behaviour.declare_length
        self._stream_headers({"Content-Length": str(size)} if declared
                             else {"Transfer-Encoding": "chunked"})
        sent = 0
        while sent < size and not fault.stopped:
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


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None
