"""The console's Flask application: configuration, security hooks, blueprints, error pages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
import structlog
from flask import Flask, render_template
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from recovery.core.redact import redact_text, redact_url
from recovery.dlq.store import DlqBusyError, DlqUnavailableError
from recovery.engine.runtime import Runtime
from recovery.ops.console import security
from recovery.ops.console.config import ConsoleConfig
from recovery.ops.console.throttle import LoginThrottle

SESSION_HOURS = 8

log = structlog.get_logger(__name__)


def create_app(rt: Runtime, config: ConsoleConfig) -> Flask:
    """A console for this runtime; `config` decides who may log in and the cookie flags."""
    from recovery.ops.console.views_dlq import dlq
    from recovery.ops.console.views_ops import auth, breakers, jobs, overview
    from recovery.ops.console.views_workflows import workflows

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_NAME="recovery_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        MAX_CONTENT_LENGTH=1024 * 1024,
        MAX_FORM_PARTS=20_000,
    )
    app.extensions["recovery"] = {"runtime": rt, "config": config, "throttle": LoginThrottle()}
    security.install(app, config)
    app.jinja_env.globals["config_header_mode"] = config.auth_header is not None
    for blueprint in (auth, overview, dlq, breakers, jobs, workflows):
        app.register_blueprint(blueprint)
    _error_pages(app, rt)
    return app


def _error_pages(app: Flask, rt: Runtime) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[str, int]:
        return render_template("error.html", title=exc.name, message=exc.description,
                               code=exc.code), exc.code or 500

    @app.errorhandler(DlqBusyError)
    @app.errorhandler(DlqUnavailableError)
    def _dlq(exc: Exception) -> tuple[str, int]:
        return render_template("error.html", title="The DLQ is busy or unreachable",
                               message=str(exc), code=409), 409

    @app.errorhandler(SQLAlchemyError)
    def _database(exc: Exception) -> tuple[str, int]:
        log.error("console_database_error", error=redact_text(str(exc))[:500])
        return render_template("error.html", title="The audit trail is unreachable",
                               message="Could not read the audit trail; check DATABASE_URL, that "
                               "PostgreSQL is running and that `recovery-cli db upgrade` ran.",
                               code=503), 503

    @app.errorhandler(redis.RedisError)
    def _redis(exc: Exception) -> tuple[str, int]:
        message = (f"Could not reach Redis at {redact_url(rt.settings.redis_url)}; check "
                   "REDIS_URL and that Redis is running.")
        log.error("console_redis_error", error=redact_text(str(exc))[:500])
        return render_template("error.html", title="Redis is unreachable", message=message,
                               code=503), 503


def runtime() -> Runtime:
    from flask import current_app

    found: Any = current_app.extensions["recovery"]["runtime"]
    return found
