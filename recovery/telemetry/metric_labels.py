"""Endpoint labels of bounded cardinality for the call metrics.

Every label set is a Redis hash field kept forever and a Prometheus series, so a label must
never carry raw path segments: `/users/alice`, `/files/report-7.pdf` and `/search/%E2%9C%93`
would each make a new series. Two bounds:

1. `endpoint_label` turns a path into a template: the query string goes, segments that look
   like ids (numbers, uuids, hex, emails, long or encoded tokens) become `:id`, and only the
   first MAX_SEGMENTS segments are kept.
2. `EndpointBound` admits at most MAX_ENDPOINTS_PER_INTEGRATION templates per integration,
   shared by the whole cluster through a Redis set when there is one; every later template
   is counted under OVERFLOW. So label sets are bounded by integrations x (limit + 1) x
   methods x statuses, however many distinct paths the producers send.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import redis
import structlog

from recovery.state import lua

log = structlog.get_logger(__name__)

MAX_SEGMENTS = 6
MAX_SEGMENT_CHARS = 32
MAX_ENDPOINTS_PER_INTEGRATION = 50
OVERFLOW = "/:other"
CACHE_ENTRIES = 10_000

_ID_SEGMENT = re.compile(
    r"[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{12,}"
)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


Admit = Callable[[str, str, int], bool]


def endpoint_label(path: str) -> str:
    """A low-cardinality endpoint for labels: ids become `:id`, long paths are cut.

    `/users/42/orders/9f1c...` -> `/users/:id/orders/:id`. The query string is dropped.
    """
    route = path.split("?", 1)[0].split("#", 1)[0]
    segments = [s for s in route.split("/") if s]
    shown = [_segment_label(s) for s in segments[:MAX_SEGMENTS]]
    if len(segments) > MAX_SEGMENTS:
        shown.append("*")
    return "/" + "/".join(shown)


def _segment_label(segment: str) -> str:
    looks_like_id = (
        _ID_SEGMENT.fullmatch(segment) is not None
        or _WORD.fullmatch(segment) is None  # encoded, spaced, punctuated or non-ASCII
        or sum(ch.isdigit() for ch in segment) > 2
        or len(segment) > MAX_SEGMENT_CHARS
        or "@" in segment
    )
    return ":id" if looks_like_id else segment


class EndpointBound:
    """At most `limit` endpoint labels per integration; `admit` says whether a new one fits."""

    def __init__(self, admit: Admit, limit: int = MAX_ENDPOINTS_PER_INTEGRATION) -> None:
        self._admit = admit
        self.limit = limit
        self._decided: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    def label(self, integration: str, endpoint: str) -> str:
        """`endpoint`, or OVERFLOW when the integration has used up its endpoints."""
        key = (integration, endpoint)
        admitted = self._decided.get(key)
        if admitted is None:
            admitted = self._admit(integration, endpoint, self.limit)
            with self._lock:
                if len(self._decided) >= CACHE_ENTRIES:
                    self._decided.clear()
                self._decided[key] = admitted
        return endpoint if admitted else OVERFLOW


def local_admit() -> Admit:
    """Admission by this process alone (no Redis)."""
    seen: dict[str, set[str]] = {}
    lock = threading.Lock()

    def admit(integration: str, endpoint: str, limit: int) -> bool:
        with lock:
            known = seen.setdefault(integration, set())
            if endpoint in known or len(known) < limit:
                known.add(endpoint)
                return True
            return False

    return admit


def redis_admit(client: redis.Redis, prefix: str) -> Admit:
    """Admission shared by every process on `client`: one set per integration (at most
    `limit` members), asked once per new endpoint per process. Redis failing: this process
    decides alone, so the bound still holds per process."""
    script = client.register_script(lua.load("metric_labels_admit"))
    fallback = local_admit()

    def admit(integration: str, endpoint: str, limit: int) -> bool:
        try:
            return bool(script(keys=[f"{prefix}metrics:endpoints:{integration}"],
                               args=[endpoint, limit]))
        except redis.RedisError as exc:
            log.warning("metrics_endpoint_admission_failed", error=str(exc))
            return fallback(integration, endpoint, limit)

    return admit
