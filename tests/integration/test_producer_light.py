"""Issue 16: a producer enqueues with Redis and the broker only. No database connection, no
SQLAlchemy, none of the worker's runtime, wiring or beat schedule (a fresh process, so
`sys.modules` shows what enqueueing loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from recovery.audit.ops import decode_ops

ROOT = Path(__file__).resolve().parents[2]
CLOSED_DATABASE = "postgresql://nobody@127.0.0.1:1/nowhere"

PRODUCER = """
import json, sys
import recovery
handle = recovery.enqueue("primary-api", "POST", "/orders", json={"id": 1},
                          idempotency_key="order-1")
heavy = ["sqlalchemy", "sqlalchemy.engine", "psycopg", "recovery.audit.writer",
         "recovery.audit.sql", "recovery.audit.db", "recovery.engine.runtime",
         "recovery.engine.pipeline", "recovery.engine.gate", "recovery.state.breaker",
         "recovery.state.ratelimit", "recovery.telemetry.metrics", "recovery.celery_app",
         "beat_schedule", "recovery.state.beatlock"]
print(json.dumps({"job_id": str(handle),
                  "loaded": sorted(name for name in heavy if name in sys.modules)}))
"""


def test_enqueue_with_the_database_unreachable_publishes_and_spools_without_sqlalchemy(
        client: redis.Redis, prefix: str) -> None:
    env = {**os.environ, "RECOVERY_REDIS_PREFIX": prefix, "DATABASE_URL": CLOSED_DATABASE}
    env.pop("RECOVERY_INTEGRATIONS", None)  # the environment-only primary-api

    result = subprocess.run([sys.executable, "-c", PRODUCER], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    [message] = client.lrange(f"{prefix}integrations", 0, -1)
    assert json.loads(message)["headers"]["id"] == report["job_id"]
    spooled = [(op.kind, op.job_id) for _, fields in client.xrange(f"{prefix}audit:spool")
               for op in decode_ops(fields[b"ops"])]
    assert spooled == [("job_queued", report["job_id"])]
