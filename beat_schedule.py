"""Celery Beat's schedule, built from the integration registry, and the scheduler that uses it.

`celery -A recovery.celery_app beat` loads this module when it starts, through the app's
`beat_scheduler` setting (`Scheduler` below), so importing the app never builds the schedule.
It runs, for every integration that has a `health_check`, the
task `tasks.health.check` every `health_check.interval_ms` (default `HEALTH_CHECK_INTERVAL`),
and, when `DLQ_ENABLED` and `ENABLE_AUTO_RECOVERY` are both true, the capped replay
`tasks.dlq.replay` every `DLQ_RETRY_DELAY` (it leaves client errors and poison entries to an
operator unless DLQ_AUTO_REPLAY_CLIENT_ERRORS / DLQ_AUTO_REPLAY_POISON, and then trims the DLQ
to DLQ_MAX_ENTRIES / DLQ_MAX_AGE_DAYS into the archive table). An integration without a health
check has no entry.

Each entry expires after one period: if no worker takes it in time, the next one replaces it
instead of piling up behind it.

Exactly one beat may run. Importing this module installs the guard (`recovery.state.beatlock`),
which takes its lock on `beat_init`, before the first tick: a second beat exits at start with a
message naming the one that holds the lock.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.beat import PersistentScheduler

from recovery.config.loader import get_registry
from recovery.config.registry import Registry
from recovery.config.settings import Settings, get_settings
from recovery.state.beatlock import install_beat_guard

HEALTH_TASK = "tasks.health.check"
DLQ_REPLAY_TASK = "tasks.dlq.replay"
DLQ_REPLAY_ENTRY = "dlq-replay"


def health_entry_name(integration_id: str) -> str:
    return f"health-check:{integration_id}"


def build_schedule(registry: Registry, settings: Settings) -> dict[str, dict[str, Any]]:
    """The `beat_schedule` mapping for this registry and these settings."""
    schedule: dict[str, dict[str, Any]] = {}
    for integration in registry:
        check = integration.health_check
        if check is None:
            continue
        period_s = check.interval_ms / 1000
        schedule[health_entry_name(integration.id)] = {
            "task": HEALTH_TASK,
            "schedule": timedelta(seconds=period_s),
            "args": (integration.id,),
            "options": {"expires": period_s},
        }
    if settings.dlq_enabled and settings.enable_auto_recovery:
        period_s = settings.dlq_retry_delay_ms / 1000
        schedule[DLQ_REPLAY_ENTRY] = {
            "task": DLQ_REPLAY_TASK,
            "schedule": timedelta(seconds=period_s),
            "options": {"expires": period_s},
        }
    return schedule


class Scheduler(PersistentScheduler):
    """Celery's default scheduler (the `--schedule` file keeps last-run times) over our
    schedule: the app's `beat_schedule` is set from the registry before the entries load.
    Beat also makes a lazy instance for its banner, which reads no schedule."""

    def setup_schedule(self) -> None:
        self.app.conf.beat_schedule = beat_schedule
        super().setup_schedule()


install_beat_guard()
beat_schedule = build_schedule(get_registry(), get_settings())
