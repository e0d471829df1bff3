"""The idempotency key of an api_call step's job, `wf-{run id}-{step id}`, and its reverse.

A replayed step sends the key the upstream already saw, and a display can tell from a job's
key which run and step it belongs to (run ids are UUIDs, so the key splits unambiguously).
"""

from __future__ import annotations

import uuid

PREFIX = "wf-"
_RUN_ID_CHARS = 36


def step_key(run_id: str, step_id: str) -> str:
    return f"{PREFIX}{run_id}-{step_id}"


def step_of_key(key: str | None) -> tuple[str, str] | None:
    """(run id, step id) named by a step's key; None for any other key."""
    if not key or not key.startswith(PREFIX):
        return None
    rest = key[len(PREFIX):]
    run_id, step_id = rest[:_RUN_ID_CHARS], rest[_RUN_ID_CHARS + 1:]
    if rest[_RUN_ID_CHARS:_RUN_ID_CHARS + 1] != "-" or not step_id:
        return None
    try:
        uuid.UUID(run_id)
    except ValueError:
        return None
    return run_id, step_id
