"""api-recovery: resilient third-party HTTP calls as Celery jobs.

`recovery.enqueue(integration, method, path, ...)` is the producer's entry point.
"""

from __future__ import annotations

from typing import Any

__all__ = ["enqueue"]


def enqueue(integration: str, method: str, path: str, **options: Any) -> str:
    """Validate and enqueue one integration call; see `recovery.engine.producer.enqueue`."""
    # Imported when called: `import recovery` loads nothing heavy.
    from recovery.engine.producer import enqueue as _enqueue

    return _enqueue(integration, method, path, **options)
