"""`tasks.dlq.replay`: the capped DLQ replay that Celery Beat runs every DLQ_RETRY_DELAY."""

from __future__ import annotations

from typing import Any

import structlog

from recovery.celery_app import app
from recovery.config.settings import Settings
from recovery.dlq.cap import enforce_cap
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.dlq.store import DlqBusyError, EntryFilter
from recovery.engine.runtime import get_runtime

log = structlog.get_logger(__name__)

DEFAULT_LIMIT = 100
ACTOR = "tasks.dlq.replay"


def auto_filter(settings: Settings) -> EntryFilter:
    """What an unattended replay leaves for an operator: client errors (the request itself was
    wrong) and poison messages (they killed their worker), unless the settings allow them."""
    return EntryFilter(
        exclude_classes=None if settings.dlq_auto_replay_client_errors
        else frozenset({"client_error"}),
        exclude_poison=not settings.dlq_auto_replay_poison)


@app.task(name="tasks.dlq.replay", ignore_result=True)
def replay(limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Replay at most `limit` dead letters, skipping integrations whose breaker is open, and
    client errors and poison messages unless DLQ_AUTO_REPLAY_CLIENT_ERRORS /
    DLQ_AUTO_REPLAY_POISON say otherwise; then keep the DLQ within its cap.

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
    options = ReplayOptions(filter=auto_filter(settings), limit=limit, actor=ACTOR)
    try:
        report = replay_dlq(runtime, options)
    except DlqBusyError as exc:
        log.info("dlq_auto_replay_skipped", reason=str(exc))
        return {"status": "busy", "reason": str(exc)}
    trimmed = enforce_cap(runtime, ACTOR)
    return {"status": "done", **report.summary(),
            "archived": trimmed.archived if trimmed is not None else 0}
