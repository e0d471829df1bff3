"""Session-wide test environment, set before any module builds the Celery app.

Every test run talks to Redis db 15 under its own key prefix (broker queues included, through
kombu's global_keyprefix), so runs never see each other's keys or queues.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

SESSION_PREFIX = f"test-{uuid.uuid4().hex[:10]}:"

os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ["RECOVERY_REDIS_PREFIX"] = SESSION_PREFIX
os.environ.setdefault("LOG_LEVEL", "warning")
for name in ("RECOVERY_INTEGRATIONS", "SENTRY_DSN", "ALERT_WEBHOOK_URL"):
    os.environ.pop(name, None)

# No per-example deadline: this machine is shared, and a property test checks behaviour, never
# speed (an example that once took 250 ms on a busy core would fail the run as "flaky").
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """A command that configured logging (level, renderer, the root logger's handler) must not
    filter or reformat the next test's logs."""
    yield
    from recovery.telemetry.logging import reset_logging  # not at the top: env first, then imports

    reset_logging()
