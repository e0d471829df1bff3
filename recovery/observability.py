"""structlog configuration and the per-job logging context.

Logs are JSON lines, or readable console output when stderr is a terminal. Inside a job, every
line carries job_id, task_id, integration and attempt (contextvars bound per task, cleared after).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

from recovery.jobs import JobSpec, job_message_view
from recovery.redact import scrub_data

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Last line of defence: no field of a log line carries a credential. Free text is
    scrubbed; structured values lose secret-looking keys (the line's own field names are ours
    and kept); a job message, like a `JobSpec` (whose repr is redacted), shows only what its
    integration's `audit:` block allows."""
    return {key: scrub_data(value, job_message_view) if isinstance(value, str | Mapping | list)
            else value for key, value in event.items()}


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = (structlog.processors.JSONRenderer() if use_json
                     else structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


@contextmanager
def job_context(job: JobSpec, task_id: str | None, attempt: int) -> Iterator[None]:
    """Bind the job's identity to every log line emitted inside the block."""
    tokens = structlog.contextvars.bind_contextvars(
        job_id=job.job_id, task_id=task_id, integration=job.integration, attempt=attempt)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
