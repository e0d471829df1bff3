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
import secrets
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

from recovery.demo.fault_http import FaultHTTPServer
from recovery.demo.fault_modes import (
    CONTROL_KEYS,
    MODES,
    OPTION_KEYS,
    STREAMING_MODES,
    Behaviour,
    FaultConfigError,
    ScriptItem,
    behaviour_for,
    check_int,
    checked_script,
)


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
        self._initial = behaviour_for(mode, options)
        self._lock = threading.Lock()
        self._listener_lock = threading.RLock()
        self._stopped = threading.Event()
        self._stopped.set()  # until start()
        self._server: FaultHTTPServer | None = None
        self._timer: threading.Timer | None = None
        self._clear()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    @property
    def behaviour(self) -> Behaviour:
        """How API requests are answered now (when no script entry is pending)."""
        return self._behaviour

    @property
    def stopped(self) -> bool:
        """Whether stop() was called (streams and delays end early then)."""
        return self._stopped.is_set()

    def wait_stopped(self, seconds: float) -> bool:
        """Wait up to `seconds`; True as soon as stop() is called."""
        return self._stopped.wait(seconds)

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
            server = FaultHTTPServer((self.host, self.port), self)
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
        options = {key: payload[key] for key in OPTION_KEYS if key in payload}
        if (options or for_ms is not None) and mode is None:
            raise FaultConfigError("Options such as 'status' need a 'mode' in the same request.")
        if for_ms is not None and mode != "down":
            raise FaultConfigError("'for_ms' only applies to the mode 'down'.")
        if for_ms is not None:
            check_int("for_ms", for_ms, 1, 3_600_000)
        behaviour = None
        if mode is not None and (mode != "down" or options):
            behaviour = behaviour_for(mode, options)
        script = checked_script(payload["script"]) if "script" in payload else None
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

    def record_request(self, method: str, path: str, headers: Mapping[str, str],
                peer: str, body: bytes = b"") -> dict[str, Any]:
        key = headers.get("Idempotency-Key") or headers.get("X-Idempotency-Key")
        with self._lock:
            record = {"n": len(self._records) + 1, "method": method, "path": path,
                      "headers": dict(headers), "time": time.time(), "idempotency_key": key,
                      "status": None, "peer": peer, "body": body.decode("utf-8", "replace")}
            self._records.append(record)
        return record

    def streaming(self, route: str) -> Behaviour | None:
        """The behaviour when the answer to `route` is a drip or huge body, else None."""
        with self._lock:
            behaviour = self._behaviour
        return behaviour if behaviour.mode in STREAMING_MODES and route != "/health" else None

    def decide(self, route: str, authorization: str | None) -> tuple[int | None, float]:
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

    def finish_request(self, record: dict[str, Any], status: int | None, counted: bool) -> None:
        with self._lock:
            record["status"] = "reset" if status is None else status
            key = record["idempotency_key"]
            if counted and key and status is not None and 200 <= status < 300:
                self._successes[key] += 1

    def issue_token(self, form: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
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
