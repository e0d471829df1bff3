"""`tasks.dlq.replay`: the capped DLQ replay that Celery Beat runs every DLQ_RETRY_DELAY."""

from __future__ import annotations

from typing import Any

import structlog

from recovery.celery_app import app
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.dlq.store import DlqBusyError
from recovery.runtime import get_runtime

log = structlog.get_logger(__name__)

DEFAULT_LIMIT = 100
ACTOR = "tasks.dlq.replay"


@app.task(name="tasks.dlq.replay", ignore_result=True)
def replay(limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Replay at most `limit` dead letters, skipping integrations whose breaker is open.

    Does nothing unless DLQ_ENABLED and ENABLE_AUTO_RECOVERY are both true, and steps aside
    while an operator's replay or purge holds the DLQ.
    """
    runtime = get_runtime()
    settings = runtime.settings
    if not (settings.dlq_enabled and settings.enable_auto_recovery):
        reason = "DLQ_ENABLED and ENABLE_AUTO_RECOVERY must both be true for automatic replay."
        log.info("dlq_auto_replay_disabled", reason=reason)
        return {"status": "disabled", "reason": reason}
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"The replay limit must be a whole number of at least 1, got {limit!r}.")
    try:
        report = replay_dlq(runtime, ReplayOptions(limit=limit, actor=ACTOR))
    except DlqBusyError as exc:
        log.info("dlq_auto_replay_skipped", reason=str(exc))
        return {"status": "busy", "reason": str(exc)}
    return {"status": "done", **report.summary()}
