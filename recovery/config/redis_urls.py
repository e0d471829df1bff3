"""The state store's URL: one Redis, a Redis Cluster, or a master found through Sentinel.

`REDIS_URL` takes redis-py's own URLs (`redis://`, `rediss://`, `unix://`) and two of ours,
for what a single URL in redis-py cannot name:

* `redis+cluster://[user:password@]host:port[,host:port...][/]`: the startup nodes of a Redis
  Cluster (any reachable node is enough; the others are learnt from it). `rediss+cluster://`
  speaks TLS.
* `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`: the Sentinels and
  the name of the master they watch (`service`), and the database number (0 if left out).
  `rediss+sentinel://` speaks TLS to the master. The password is the master's; Sentinels
  without a password are assumed (the usual setup on a private network).

Parsing is pure (no sockets), so settings can refuse a bad URL at start with a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

Kind = Literal["single", "cluster", "sentinel"]
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SINGLE_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisTarget:
    """What a state-store URL names. `url` is the URL itself (for `single`, redis-py's)."""

    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    tls: bool = False
    service: str | None = None
    db: int = 0


class RedisUrlError(ValueError):
    """A state-store URL that names no Redis we can connect to; the message says why."""


def kind_of(url: str) -> Kind | None:
    """`single`, `cluster` or `sentinel` by the URL's scheme; None for any other scheme."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    return "single" if scheme in SINGLE_SCHEMES else None


def parse(url: str) -> RedisTarget:
    """The target of a cluster or sentinel URL (a single-Redis URL is returned as it is).

    Raises RedisUrlError with what is wrong, never showing the password."""
    kind = kind_of(url)
    if kind is None:
        raise RedisUrlError("the scheme must be redis://, rediss://, unix://, redis+cluster:// "
                            "or redis+sentinel://")
    if kind == "single":
        return RedisTarget("single", url)
    scheme, rest = url.split("://", 1)
    credentials, _, location = rest.rpartition("@")
    hosts, _, path = location.partition("/")
    if "?" in path or "#" in path or "?" in hosts:
        raise RedisUrlError("it must not carry a query string or fragment")
    username, password = _credentials(credentials)
    nodes = tuple(_node(item) for item in hosts.split(","))
    service, db = _sentinel_path(path) if kind == "sentinel" else (None, 0)
    if kind == "cluster" and path.strip("/"):
        raise RedisUrlError("a Redis Cluster has no database numbers: end the URL after the "
                            "host list (a cluster uses database 0 only)")
    return RedisTarget(kind, url, nodes, username, password, scheme.lower().startswith("rediss"),
                       service, db)


def _credentials(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _node(item: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError(f"each node must be host:port with a port from 1 to 65535, got "
                            f"{item.strip()!r}")
    return host.strip("[]"), int(port)


def _sentinel_path(path: str) -> tuple[str, int]:
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise RedisUrlError("a Sentinel URL must end with the master's service name and an "
                            "optional database number, as in /mymaster/0")
    if len(parts) == 2 and not parts[1].isdigit():
        raise RedisUrlError(f"the database number must be a whole number, got {parts[1]!r}")
    return unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0
