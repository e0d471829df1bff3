"""structlog configuration and the per-job logging context.

Logs are JSON lines, or readable console output when stderr is a terminal. Every line goes
through the same processors, whether it is one of our structlog events or a stdlib record from
Celery, kombu, alembic or another library (structlog's `ProcessorFormatter` on the root
logger), so every line has `event`, `level`, `logger` and `timestamp` and is redacted. Inside a
job, every line carries job_id, task_id, integration and attempt (contextvars bound per task,
cleared after).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

from recovery.core.message import JobSpec, job_message_view
from recovery.core.redact import scrub_data

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


#: Every line's fields: run on our events before they reach stdlib logging, and on stdlib
#: records (Celery, kombu, ...) by the formatter (`foreign_pre_chain`).
_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Last line of defence: no field of a log line carries a credential. Free text is
    scrubbed; structured values lose secret-looking keys (the line's own field names are ours
    and kept); a job message, like a `JobSpec` (whose repr is redacted), shows only what its
    integration's `audit:` block allows."""
    return {key: scrub_data(value, job_message_view) if isinstance(value, str | Mapping | list)
            else value for key, value in event.items()}


def _level(name: str | int) -> int:
    return name if isinstance(name, int) else _LEVELS.get(name.lower(), logging.INFO)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is emitted, not when logging was set up,
    so a replaced stderr (pytest's capture, a daemon's redirect) gets the lines."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


class _ForeignLevelFilter(logging.Filter):
    """Our own events were already filtered by LOG_LEVEL in structlog; lines from Celery and
    other libraries pass at their own threshold (`celery --loglevel` in workers and beat)."""

    def __init__(self, levelno: int) -> None:
        super().__init__()
        self.levelno = levelno

    def filter(self, record: logging.LogRecord) -> bool:
        ours = isinstance(record.msg, dict) and hasattr(record, "_logger")
        return ours or record.levelno >= self.levelno


def _formatter(use_json: bool) -> structlog.stdlib.ProcessorFormatter:
    """Renders structlog events and foreign stdlib records alike: the same fields, the same
    redaction, the same renderer."""
    renderer: Any = (structlog.processors.JSONRenderer() if use_json
                     else structlog.dev.ConsoleRenderer())
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
    )


def configure_logging(level: str = "info", *, json: bool | None = None,
                      foreign_level: str | int | None = None) -> None:
    """Send every log line of the process, ours and the libraries', to stderr in one format.

    `level` (LOG_LEVEL) filters our events; `foreign_level` (default: the same) filters the
    stdlib records of Celery, kombu, alembic, urllib3 and the rest. JSON lines unless stderr is
    a terminal (or `json` says otherwise). Calling it again replaces the previous setup.
    """
    use_json = not sys.stderr.isatty() if json is None else json
    own, foreign = _level(level), _level(foreign_level if foreign_level is not None else level)
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(own),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _CurrentStderrHandler()
    handler.setFormatter(_formatter(use_json))
    handler.addFilter(_ForeignLevelFilter(foreign))
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _CurrentStderrHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(min(own, foreign))
    logging.captureWarnings(True)


def reset_logging() -> None:
    """Undo `configure_logging`: structlog's defaults, the root logger without our handler and
    at its default level (WARNING), Python warnings printed again."""
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CurrentStderrHandler)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(False)


@contextmanager
def job_context(job: JobSpec, task_id: str | None, attempt: int) -> Iterator[None]:
    """Bind the job's identity to every log line emitted inside the block."""
    tokens = structlog.contextvars.bind_contextvars(
        job_id=job.job_id, task_id=task_id, integration=job.integration, attempt=attempt)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
