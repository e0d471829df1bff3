"""The bounds of the audit spool and of the stream of rows the database can never take.

The spool (`recovery.audit.spool.RedisSpool`) grows while PostgreSQL is away. It is capped at
AUDIT_SPOOL_MAX_ENTRIES entries (an entry holds one commit's ops, up to 500), far above what a
long outage writes, so that a Redis running with ``maxmemory-policy noeviction`` never fills
up with audit rows and starts refusing the broker's writes. Nothing is trimmed silently: the
append script reports the spool crossing 80 % of its cap (`audit_spool_filling`, once per
crossing: the flag is cleared when it falls below 70 %) and the first entry trimmed at the cap
(`audit_spool_trimmed`, once per filling); every trim is logged with its count.

Rows the database can never write (SQLSTATE classes 22 and 23) leave the spool for the
``audit:rejected`` stream, capped at REJECTED_MAX_ENTRIES, with an alert (`audit_rows_rejected`),
so an operator can see and repair them instead of losing them to a log line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from recovery.audit.ops import Rejected
from recovery.state import lua

log = structlog.get_logger(__name__)

DEFAULT_MAX_ENTRIES = 1_000_000
FILLING_AT = 0.8
CLEARED_BELOW = 0.7
STATE_TTL_S = 24 * 3600  # a spool still above 80 % a day later is reported again
REJECTED_MAX_ENTRIES = 10_000
TRIM_LOG_EVERY_S = 5.0

# KEYS[1] spool stream, KEYS[2] its alarm state (a hash); ARGV[1] the cap, ARGV[2..] one entry's
# ops each. Appends in order, trimming the oldest entries beyond the cap. Returns
# {length, crossed 80 % now (0/1), entries trimmed, first trim since the spool was low (0/1)}.
APPEND = lua.render("audit_spool_append", filling_at=FILLING_AT, state_ttl_s=STATE_TTL_S,
                    cleared_below=CLEARED_BELOW)


@dataclass(frozen=True)
class Appended:
    """What one append found: the spool's length after it and what it had to report."""

    length: int
    crossed: bool
    trimmed: int
    first_trim: bool

    @classmethod
    def from_reply(cls, reply: Any) -> Appended:
        length, crossed, trimmed, first_trim = (int(value) for value in reply)
        return cls(length, bool(crossed), trimmed, bool(first_trim))


class SpoolAlarm:
    """Turns append replies into alerts and logs (see the module docstring)."""

    def __init__(self, key: str, max_entries: int) -> None:
        self.key = key
        self.max_entries = max_entries
        self._trim_logged_at = -TRIM_LOG_EVERY_S
        self.trimmed = 0

    def on_reply(self, reply: Any) -> None:
        """Handle the reply of one APPEND run (never raises: the ops are in the spool)."""
        try:
            self.report(Appended.from_reply(reply))
        except Exception as exc:
            log.error("audit_spool_alarm_failed", error=str(exc), error_type=type(exc).__name__)

    def report(self, appended: Appended) -> None:
        if appended.crossed or appended.first_trim:
            self._alert(appended)
        if appended.trimmed:
            self.trimmed += appended.trimmed
            now = time.monotonic()
            if now - self._trim_logged_at >= TRIM_LOG_EVERY_S:
                self._trim_logged_at = now
                log.error("audit_spool_trimmed", trimmed_total=self.trimmed,
                          max_entries=self.max_entries, spool=self.key)

    def _alert(self, appended: Appended) -> None:
        # Imported only when there is something to say: the alerter loads Sentry's SDK, which a
        # producer appending its "queued" row has no use for.
        from recovery.telemetry.alerts import alert

        if appended.crossed:
            alert("audit_spool_filling",
                  f"The audit spool holds {appended.length} of at most {self.max_entries} "
                  "entries: PostgreSQL has not taken audit rows for a while. Bring the "
                  "database back (or fix what refuses the writes) before the spool is full "
                  "and its oldest rows are trimmed.", length=appended.length,
                  max_entries=self.max_entries, spool=self.key)
        if appended.first_trim:
            alert("audit_spool_trimmed",
                  f"The audit spool is full ({self.max_entries} entries): its oldest audit "
                  "rows are being trimmed and are lost. Bring PostgreSQL back, or raise "
                  "AUDIT_SPOOL_MAX_ENTRIES if Redis has the memory.",
                  trimmed=appended.trimmed, max_entries=self.max_entries, spool=self.key)


class RejectedRows:
    """The capped stream of audit rows the database can never take, for an operator to read."""

    def __init__(self, client: redis.Redis | None, key_prefix: str,
                 max_entries: int = REJECTED_MAX_ENTRIES) -> None:
        self._client = client
        self.key = f"{key_prefix}audit:rejected"
        self.max_entries = max_entries

    def put(self, rejected: list[Rejected]) -> None:
        """Keep `rejected` (in Redis when there is one, else in the log) and raise one alert."""
        from recovery.telemetry.alerts import alert  # when used, as in SpoolAlarm._alert

        if not rejected:
            return
        kept = self._store(rejected)
        for item in rejected:
            log.error("audit_op_rejected", kind=item.op.kind, job_id=item.op.job_id,
                      error=item.error, sqlstate=item.sqlstate,
                      kept_in=self.key if kept else None,
                      op=None if kept else item.op.to_json())
        where = f"kept in the Redis stream {self.key}" if kept else "written to the log"
        alert("audit_rows_rejected",
              f"PostgreSQL refused {len(rejected)} audit row(s) that can never be written "
              f"({rejected[0].error[:200]}); they were {where}. Inspect and repair them there.",
              count=len(rejected), sqlstate=rejected[0].sqlstate, stream=self.key)

    def read(self) -> list[dict[str, Any]]:
        """Every kept rejected row, oldest first (op, error, sqlstate, at)."""
        if self._client is None:
            return []
        entries: Any = self._client.xrange(self.key)
        return [{name.decode(): json.loads(value) for name, value in fields.items()}
                for _, fields in entries]

    def _store(self, rejected: list[Rejected]) -> bool:
        if self._client is None:
            return False
        try:
            pipe = self._client.pipeline(transaction=False)
            for item in rejected:
                pipe.xadd(self.key, {"op": json.dumps(item.op.to_json()),
                                     "error": json.dumps(item.error),
                                     "sqlstate": json.dumps(item.sqlstate),
                                     "at": json.dumps(time.time())},
                          maxlen=self.max_entries, approximate=True)
            pipe.execute()
            return True
        except redis.RedisError as exc:
            log.error("audit_rejected_stream_unavailable", error=str(exc))
            return False
