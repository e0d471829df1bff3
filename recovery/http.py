"""The outbound call: one pooled `requests.Session` per integration per process.

Retries are ours (policy + Celery), so urllib3 never retries. Redirects are never followed, so
a 3xx cannot carry the request away from the integration's base URL; the caller sees the 3xx
response. Sessions are dropped in a forked child (Celery's prefork pool forks after import),
because sharing pooled sockets with the parent would interleave two processes' bytes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry

from recovery.registry import Integration
from recovery.urlguard import UnsafePathError, is_inside, join_url, validate_headers

USER_AGENT = "api-recovery/0.1"
POOL_SIZE = 10
MAX_CONNECT_TIMEOUT_S = 10.0
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_sessions: dict[str, tuple[int, dict[str, str], requests.Session]] = {}
_environments: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def session_for(integration: Integration) -> requests.Session:
    """The pooled session for `integration` in this process, built on first use.

    A session is rebuilt when the integration's default headers change (a reloaded registry)
    or when the current process is not the one that built it (after a fork). A replaced session
    is left to the garbage collector, since another thread may still be using it.
    """
    pid = os.getpid()
    with _lock:
        entry = _sessions.get(integration.id)
        if entry is not None and entry[0] == pid and entry[1] == integration.headers:
            return entry[2]
        session = _build_session(validate_headers(integration.headers))
        _sessions[integration.id] = (pid, dict(integration.headers), session)
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

    The timeout is (connect, read) from `timeout_s` or the integration's `timeout_ms`.
    Raises UnsafePathError/UnsafeHeaderError (ValueError) for a path or header that is refused,
    ValueError for an unknown method or a bad timeout, and requests exceptions untouched.
    """
    verb = _check_method(method)
    url = join_url(integration.base_url, path)
    extra = validate_headers(headers or {})
    timeout = _timeout(integration, timeout_s)
    session = session_for(integration)
    prepared = _prepare(session, verb, url, json, params, extra)
    if prepared.url is None or not is_inside(integration.base_url, prepared.url):
        raise UnsafePathError(
            f"The request URL for path {path!r} left the base URL of integration "
            f"{integration.id!r}; it was not sent."
        )
    response = session.get_adapter(prepared.url).send(prepared, timeout=timeout,
                                                      **environment_for(prepared.url))
    response.content  # noqa: B018 - reads the body, which returns the connection to the pool
    return response


def _prepare(session: requests.Session, verb: str, url: str, json: Any,
             params: Mapping[str, Any] | None, headers: Mapping[str, str]) -> PreparedRequest:
    """The request `Session.prepare_request` would build, without what we never use.

    Our sessions hold no auth and trust no environment, and they keep no cookies between jobs:
    one job's upstream cookie is not another job's to send. What is left is the method, the
    URL with its query, the session's headers under the job's, and the body; merging settings
    and cookie jars the general way cost a tenth to a quarter of the whole call's CPU here.
    """
    merged = CaseInsensitiveDict(session.headers)
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
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
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
    for pid, _, session in entries:
        if pid == os.getpid():
            session.close()


def _build_session(headers: Mapping[str, str]) -> requests.Session:
    session = requests.Session()
    no_retries = Retry(total=0, connect=0, read=False, redirect=False, status=0,
                       raise_on_status=False)
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE, max_retries=no_retries)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers.update(headers)
    session.trust_env = False  # the environment is read once per origin: environment_for
    return session


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
