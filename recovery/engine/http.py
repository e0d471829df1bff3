"""The outbound call: one pooled `requests.Session` per origin per process, read with limits.

Retries are ours (policy + Celery), so urllib3 never retries. Redirects are never followed, so
a 3xx cannot carry the request away from the integration's base URL; the caller sees the 3xx
response. Sessions are dropped in a forked child (Celery's prefork pool forks after import),
because sharing pooled sockets with the parent would interleave two processes' bytes.

A session is only a connection pool: it holds no credentials. The job threads of a worker
share it safely, because they use only what is safe to share: its headers are read, never
written, after it is built; requests are prepared without its cookie jar or settings merging
(`_prepare`); and they go straight to its adapter, whose urllib3 pool hands each thread a
connection of its own (one kept per thread: the pool is as large as WORKER_CONCURRENCY).
Each request carries the headers of the integration (or fallback) it is sent for, so a
primary's API key can never ride along to a fallback's origin, however the two share a process.

Every answer is read streamed under two limits: an overall deadline for the whole call (connect,
headers and every body read; a slow drip that never trips a per-read timeout still ends) and a
maximum size. Either aborts the read and closes the connection (`ResponseDeadlineError`,
`ResponseTooLargeError`). One gap remains, as in urllib3 itself: the status line and headers
are read under a socket timeout of the time left when they start, so headers arriving byte by
byte are bounded per read, not as a whole; the body never is.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from recovery.config.registry import Integration
from recovery.config.settings import get_settings
from recovery.config.urlguard import UnsafePathError, is_inside, join_url, validate_headers
from recovery.core.errors import ResponseDeadlineError, ResponseTooLargeError

USER_AGENT = "api-recovery/0.1"
POOL_SIZE = 10
MAX_CONNECT_TIMEOUT_S = 10.0
#: Largest piece read from the socket at once; the size limit is checked after every piece.
CHUNK_BYTES = 64 * 1024
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_sessions: dict[str, tuple[int, requests.Session]] = {}
_environments: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of `url`, lower case: what a connection pool is keyed by."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def session_for(url: str) -> requests.Session:
    """The pooled session for the origin of `url` in this process, built on first use.

    A session is rebuilt when the current process is not the one that built it (after a
    fork). Sessions carry no headers but the User-Agent, so two integrations (or an integration
    and its fallback) on one origin may share a pool without sharing credentials.
    """
    origin = origin_of(url)
    pid = os.getpid()
    with _lock:
        entry = _sessions.get(origin)
        if entry is not None and entry[0] == pid:
            return entry[1]
        session = _build_session()
        _sessions[origin] = (pid, session)
    return session


def send(
    integration: Integration,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> requests.Response:
    """Send one request to `path` under the integration's base URL and return the response.

    The request carries the integration's own headers under the job's `headers`. The timeout
    is (connect, read) from `timeout_s` or the integration's `timeout_ms`; the whole call must
    end within the integration's `deadline_ms` (by default that same timeout), and its body may
    not exceed `max_response_bytes`. Raises UnsafePathError/UnsafeHeaderError (ValueError) for
    a path or header that is refused, ValueError for an unknown method or a bad timeout,
    ResponseDeadlineError/ResponseTooLargeError when a limit is hit, and other requests
    exceptions as requests raises them.
    """
    verb = _check_method(method)
    url = join_url(integration.base_url, path)
    own = validate_headers(integration.headers)
    extra = validate_headers(headers or {})
    timeout = _timeout(integration, timeout_s)
    deadline_s = _deadline_s(integration, timeout)
    started = time.monotonic()
    session = session_for(integration.base_url)
    prepared = _prepare(session, verb, url, json, params, own, extra)
    if prepared.url is None or not is_inside(integration.base_url, prepared.url):
        raise UnsafePathError(
            f"The request URL for path {path!r} left the base URL of integration "
            f"{integration.id!r}; it was not sent."
        )
    # requests passes a urllib3 Timeout through; `total` bounds connect plus the header wait.
    limits: Any = Timeout(connect=timeout[0], read=min(timeout[1], deadline_s), total=deadline_s)
    options = {**environment_for(prepared.url), "stream": True}
    response = session.get_adapter(prepared.url).send(prepared, timeout=limits, **options)
    _read_body(response, integration, started + deadline_s, deadline_s)
    return response


def _deadline_s(integration: Integration, timeout: tuple[float, float]) -> float:
    if integration.deadline_ms is None:
        return timeout[1]
    return integration.deadline_ms / 1000


def _read_body(response: requests.Response, integration: Integration, deadline: float,
               deadline_s: float) -> None:
    """Read the streamed body into `response` within the deadline and the size limit.

    Each read returns what the socket has (read1), with the socket's timeout set to the time
    left, so neither a silent nor a dripping upstream can hold the worker past the deadline.
    On any failure the connection is closed, never handed back to the pool half-read.
    """
    limit = integration.max_response_bytes
    body = bytearray()
    try:
        _refuse_declared_size(response, integration, limit)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _deadline_error(integration, deadline_s, len(body))
            _set_read_timeout(response, left)
            chunk = _read_piece(response, integration, deadline, deadline_s, len(body))
            if not chunk:
                break
            body += chunk
            if len(body) > limit:
                raise _too_large_error(integration, limit)
    except BaseException:
        response.close()
        raise
    response._content = bytes(body)
    response._content_consumed = True  # type: ignore[attr-defined]
    response.raw.release_conn()


def _read_piece(response: requests.Response, integration: Integration, deadline: float,
                deadline_s: float, so_far: int) -> bytes:
    """One read of the body, with urllib3's errors turned into requests' as requests does."""
    try:
        return bytes(response.raw.read1(CHUNK_BYTES, decode_content=True))
    except (u3.ReadTimeoutError, TimeoutError) as exc:
        if time.monotonic() >= deadline - 0.01:
            raise _deadline_error(integration, deadline_s, so_far) from exc
        raise requests.exceptions.ConnectionError(exc, response=response) from exc
    except u3.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc, response=response) from exc
    except u3.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc, response=response) from exc
    except u3.SSLError as exc:
        raise requests.exceptions.SSLError(exc, response=response) from exc


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    """Bound the next socket read by the time left (urllib3 set the read timeout once)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def _refuse_declared_size(response: requests.Response, integration: Integration,
                          limit: int) -> None:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large_error(integration, limit, declared=int(declared))


def _too_large_error(integration: Integration, limit: int,
                     declared: int | None = None) -> ResponseTooLargeError:
    size = (f"declared {declared} bytes, more than" if declared is not None
            else "went past")
    return ResponseTooLargeError(
        f"The answer of integration {integration.id!r} {size} its max_response_bytes "
        f"({limit} bytes); reading stopped. Raise max_response_bytes if such answers are "
        "expected."
    )


def _deadline_error(integration: Integration, deadline_s: float,
                    received: int) -> ResponseDeadlineError:
    return ResponseDeadlineError(
        f"The call to integration {integration.id!r} did not finish within its {deadline_s:g} s "
        f"deadline ({received} bytes of the body had arrived); the connection was closed."
    )


def _prepare(session: requests.Session, verb: str, url: str, json: Any,
             params: Mapping[str, Any] | None, own: Mapping[str, str],
             headers: Mapping[str, str]) -> PreparedRequest:
    """The request `Session.prepare_request` would build, without what we never use.

    Our sessions hold no auth and trust no environment, and they keep no cookies between jobs:
    one job's upstream cookie is not another job's to send. What is left is the method, the
    URL with its query, the session's headers under the job's, and the body; merging settings
    and cookie jars the general way cost a tenth to a quarter of the whole call's CPU here.
    """
    merged = CaseInsensitiveDict(session.headers)
    merged.update(own)  # the integration's (or fallback's) headers, then the job's over them
    merged.update(headers)
    prepared = PreparedRequest()
    prepared.prepare_method(verb)
    prepared.prepare_url(url, dict(params) if params else None)
    prepared.prepare_headers(merged)
    prepared.prepare_body(None, None, json)
    prepared.prepare_auth(None, url)
    prepared.prepare_hooks({})
    return prepared


def environment_for(url: str) -> dict[str, Any]:
    """The proxy and CA bundle settings the environment gives `url`'s origin, read once.

    requests re-reads every proxy variable (and ~/.netrc) for each call when `trust_env` is on,
    which costs about a millisecond of CPU per call. Every call of an integration goes to the
    same few origins, so the answer is computed once per origin and sessions keep `trust_env`
    off (.netrc credentials are never sent). `close_sessions` forgets these answers.
    """
    origin = origin_of(url)
    settings = _environments.get(origin)
    if settings is None:
        with requests.Session() as probe:
            settings = dict(probe.merge_environment_settings(origin, {}, None, None, None))
        _environments[origin] = settings
    return settings


def close_sessions() -> None:
    """Close every session this process built (worker shutdown, tests)."""
    with _lock:
        entries = list(_sessions.values())
        _sessions.clear()
        _environments.clear()
    for pid, session in entries:
        if pid == os.getpid():
            session.close()


def _build_session() -> requests.Session:
    session = requests.Session()
    no_retries = Retry(total=0, connect=0, read=False, redirect=False, status=0,
                       raise_on_status=False)
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=_pool_size(),
                          max_retries=no_retries)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.trust_env = False  # the environment is read once per origin: environment_for
    return session


def _pool_size() -> int:
    """Connections kept per origin: one per job thread, so that none of a thread pool's calls
    opens a connection only to throw it away after (urllib3 discards what exceeds the pool)."""
    return max(POOL_SIZE, get_settings().worker_concurrency)


def _check_method(method: str) -> str:
    verb = method.upper() if isinstance(method, str) else ""
    if verb not in METHODS:
        raise ValueError(
            f"The HTTP method {method!r} is not supported; use one of {', '.join(sorted(METHODS))}."
        )
    return verb


def _timeout(integration: Integration, timeout_s: float | None) -> tuple[float, float]:
    total = integration.timeout_ms / 1000 if timeout_s is None else timeout_s
    if not total > 0:
        raise ValueError(
            f"The timeout for integration {integration.id!r} must be a positive number of "
            f"seconds, got {total!r}."
        )
    return (min(total, MAX_CONNECT_TIMEOUT_S), total)


def _forget_sessions_in_child() -> None:
    """After fork: drop the parent's sessions without closing sockets the parent still uses."""
    global _lock
    _sessions.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_sessions_in_child)
