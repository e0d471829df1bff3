"""OAuth2 client-credentials tokens for integrations, cached and shared by every worker.

A token lives in Redis until shortly before it expires, so the whole cluster uses one token per
integration. On a miss exactly one worker fetches (it holds a short Redis lock) while the others
poll the cache, so a fleet of workers does not stampede the token endpoint. After a 401 the caller
`invalidate`s the token it used; the compare-and-delete drops it only if nobody has replaced it
yet, so however many jobs saw the 401, the token is fetched once.

Neither the client secret nor a token ever appears in a log line or an error message.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
import structlog
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from recovery.config.registry import Integration, OAuthConfig
from recovery.state import lua
from recovery.state.connection import integration_tag
from recovery.state.ratelimit import RedisOutage

log = structlog.get_logger(__name__)

#: A cached token is dropped this long before it expires: max(30 s, 10% of its lifetime).
MIN_EXPIRY_MARGIN_S = 30.0
EXPIRY_MARGIN_FRACTION = 0.1
#: Lifetime assumed when the token endpoint leaves out expires_in (RFC 6749 makes it optional).
DEFAULT_EXPIRES_IN_S = 300.0
#: How often workers waiting for another worker's fetch look at the cache.
WAIT_POLL_S = 0.05
#: How long waiting workers remember that the fetch they waited for failed.
FAILURE_MEMORY_MS = 2000

_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_OAUTH_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class AuthConfigError(ValueError):
    """The integration's OAuth settings cannot work (for example its secret is not set)."""


class TokenRefreshError(RuntimeError):
    """The token endpoint could not be reached or did not issue a usable token."""


@dataclass(frozen=True)
class IssuedToken:
    value: str = field(repr=False)
    expires_in_s: float

    @property
    def cache_for_s(self) -> float:
        """How long the token may be cached; zero or less means do not cache it."""
        margin = max(MIN_EXPIRY_MARGIN_S, self.expires_in_s * EXPIRY_MARGIN_FRACTION)
        return self.expires_in_s - margin


def _oauth(integration: Integration) -> OAuthConfig:
    assert integration.oauth is not None
    return integration.oauth


def fetch_token(integration: Integration) -> IssuedToken:
    """POST the client-credentials grant to the integration's token URL and parse the answer."""
    oauth = _oauth(integration)
    secret = os.environ.get(oauth.client_secret_env, "")
    if not secret:
        raise AuthConfigError(
            f"The OAuth client secret of integration '{integration.id}' is missing: set the "
            f"environment variable {oauth.client_secret_env} for every worker."
        )
    form = {
        "grant_type": "client_credentials",
        "client_id": oauth.client_id,
        "client_secret": secret,
    }
    if oauth.scope:
        form["scope"] = oauth.scope
    try:
        # No redirects: following one would send the client secret to another address.
        response = requests.post(
            oauth.token_url,
            data=form,
            headers={"Accept": "application/json"},
            timeout=integration.timeout_ms / 1000,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise TokenRefreshError(
            f"Could not reach the OAuth token endpoint of integration '{integration.id}' "
            f"({type(exc).__name__}); check oauth.token_url and that the endpoint is up."
        ) from None
    return _parse_token_response(integration, response)


def _parse_token_response(integration: Integration, response: requests.Response) -> IssuedToken:
    where = f"The OAuth token endpoint of integration '{integration.id}'"
    body = _json_object(response)
    if not 200 <= response.status_code < 300:
        code = body.get("error")
        detail = f" ({code})" if isinstance(code, str) and _OAUTH_ERROR_CODE.fullmatch(code) else ""
        raise TokenRefreshError(
            f"{where} answered HTTP {response.status_code}{detail}; check oauth.client_id, "
            f"oauth.scope and the secret in {_oauth(integration).client_secret_env}."
        )
    token = body.get("access_token")
    if not isinstance(token, str) or not _PRINTABLE.fullmatch(token):
        raise TokenRefreshError(
            f"{where} answered without a usable access_token; check oauth.token_url."
        )
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenRefreshError(
            f"{where} issued a token of type {str(token_type)[:32]!r}; only Bearer tokens "
            "are supported."
        )
    expires_in = _expires_in(body.get("expires_in"))
    if expires_in is None:
        raise TokenRefreshError(
            f"{where} answered with an expires_in that is not a positive number of seconds."
        )
    return IssuedToken(token, expires_in)


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _expires_in(raw: object) -> float | None:
    if raw is None:
        return DEFAULT_EXPIRES_IN_S
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class _Keys:
    token: str
    lock: str
    failed: str


class TokenProvider:
    """Bearer tokens for integrations with `oauth` settings; `None` for the others.

    `redis_client=None` caches in this process only (the demo); so does an unreachable Redis,
    after a logged warning, until Redis answers again.
    """

    def __init__(self, redis_client: redis.Redis | None, *, key_prefix: str) -> None:
        self._redis = redis_client
        self._prefix = key_prefix
        self._outage = RedisOutage("oauth_tokens")
        self._cad = (redis_client.register_script(lua.load("compare_and_delete"))
                     if redis_client is not None else None)
        self._guard = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._local: dict[str, tuple[str, float]] = {}

    def token_for(self, integration: Integration) -> str | None:
        """The integration's current access token, fetched only when none is cached."""
        if integration.oauth is None:
            return None
        if self._redis is None:
            return self._local_token(integration)
        return self._outage.run(
            lambda: self._shared_token(integration), lambda: self._local_token(integration)
        )

    def auth_headers(self, integration: Integration) -> dict[str, str]:
        token = self.token_for(integration)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def invalidate(self, integration: Integration, token: str) -> None:
        """Drop the cached token if it is still `token` (the one that just got a 401)."""
        if integration.oauth is None:
            return
        key = self._keys(integration).token
        if self._redis is None:
            self._local_invalidate(key, token)
            return
        dropped = self._outage.run(
            lambda: bool(self._compare_and_delete(key, token)),
            lambda: self._local_invalidate(key, token),
        )
        log.info("oauth_token_invalidated", integration=integration.id, dropped=dropped)

    def _shared_token(self, integration: Integration) -> str:
        assert self._redis is not None
        keys = self._keys(integration)
        cached = self._redis.get(keys.token)
        if cached:
            return _text(cached)
        lock_ms = 2 * integration.timeout_ms + 1000
        # One fetch across all workers (redis-py's Lock: its release is token-checked, so a
        # fetch that outlived the lock never frees another worker's).
        lock = Lock(self._redis, keys.lock, timeout=lock_ms / 1000, thread_local=False)
        deadline = time.monotonic() + lock_ms / 1000 + 1
        waited = False
        while True:
            if lock.acquire(blocking=False):
                try:
                    return self._fetch_holding_lock(integration, keys, waited=waited)
                finally:
                    _release(lock)
            waited = True
            time.sleep(WAIT_POLL_S)
            cached = self._redis.get(keys.token)
            if cached:
                return _text(cached)
            self._raise_recorded_failure(keys)
            if time.monotonic() > deadline:
                raise TokenRefreshError(
                    f"Timed out waiting for another worker to fetch the OAuth token of "
                    f"integration '{integration.id}'; check the token endpoint and retry."
                )

    def _fetch_holding_lock(self, integration: Integration, keys: _Keys, *, waited: bool) -> str:
        """Fetch and cache a token, unless the wait just ended in a token or a failed fetch."""
        assert self._redis is not None
        cached = self._redis.get(keys.token)
        if cached:  # another worker stored one between our miss and our lock
            return _text(cached)
        if waited:  # the fetch we waited for failed: share its outcome, do not hammer
            self._raise_recorded_failure(keys)
        self._redis.delete(keys.failed)
        try:
            issued = fetch_token(integration)
        except TokenRefreshError as exc:
            self._redis.set(keys.failed, str(exc), px=FAILURE_MEMORY_MS)
            raise
        if issued.cache_for_s > 0:
            self._redis.set(keys.token, issued.value, px=math.floor(issued.cache_for_s * 1000))
        log.info("oauth_token_fetched", integration=integration.id, cached_for_s=issued.cache_for_s)
        return issued.value

    def _raise_recorded_failure(self, keys: _Keys) -> None:
        assert self._redis is not None
        failure = self._redis.get(keys.failed)
        if failure:
            raise TokenRefreshError(_text(failure))

    def _local_token(self, integration: Integration) -> str:
        key = self._keys(integration).token
        with self._guard:
            fetch_lock = self._fetch_locks.setdefault(key, threading.Lock())
        with fetch_lock:
            with self._guard:
                cached = self._local.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            issued = fetch_token(integration)
            if issued.cache_for_s > 0:
                with self._guard:
                    self._local[key] = (issued.value, time.monotonic() + issued.cache_for_s)
            log.info(
                "oauth_token_fetched", integration=integration.id, cached_for_s=issued.cache_for_s
            )
            return issued.value

    def _local_invalidate(self, key: str, token: str) -> bool:
        with self._guard:
            cached = self._local.get(key)
            if cached and cached[0] == token:
                del self._local[key]
                return True
            return False

    def _compare_and_delete(self, key: str, expected: str) -> int:
        assert self._cad is not None
        return int(self._cad(keys=[key], args=[expected]))

    def _keys(self, integration: Integration) -> _Keys:
        """Keys include a fingerprint of the OAuth client, so a changed client gets a new token."""
        oauth = _oauth(integration)
        client = f"{oauth.token_url}\n{oauth.client_id}\n{oauth.scope or ''}"
        fingerprint = hashlib.sha256(client.encode("utf-8")).hexdigest()[:16]
        base = f"{self._prefix}oauth:{integration_tag(self._redis, integration.id)}:{fingerprint}"
        return _Keys(token=f"{base}:token", lock=f"{base}:lock", failed=f"{base}:failed")


def _release(lock: Lock) -> None:
    """Free the refresh lock if it is still ours (it expires on its own otherwise)."""
    try:
        lock.release()
    except LockNotOwnedError:
        log.warning("oauth_refresh_lock_expired", key=lock.name)
