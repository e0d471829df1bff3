"""Who is asking, and may they: login sessions or a trusted proxy header, roles, CSRF.

Every request but the login page and static files needs a user; every POST needs the session's
CSRF token in its form AND an Origin (or, lacking one, a Referer) of this very site. A missing
or foreign one is refused with 403 before any view runs.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from flask import Flask, abort, g, redirect, request, session, url_for
from werkzeug.wrappers import Response

from recovery.ops.console.config import ConsoleConfig, User

F = TypeVar("F", bound=Callable[..., Any])
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

log = structlog.get_logger(__name__)


def csrf_token() -> str:
    """The session's CSRF token, made on first use; every form carries it."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def same_site(origin: str | None, host_url: str) -> bool:
    """Whether an Origin or Referer value names this site (scheme, host and port)."""
    if not origin:
        return False
    seen, ours = urlsplit(origin), urlsplit(host_url)
    return (seen.scheme, seen.netloc.lower()) == (ours.scheme, ours.netloc.lower())


def csrf_problem() -> str | None:
    """Why this unsafe request is refused, or None when it carries proof it came from us."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not same_site(origin, request.host_url):
        return ("The request did not come from a page of this console (its Origin and Referer "
                "are missing or name another site).")
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        return "The form's CSRF token is missing or stale; reload the page and try again."
    return None


def current_user(config: ConsoleConfig) -> User | None:
    if config.auth_header is not None:
        return config.header_user(request.headers.get(config.auth_header, "").strip())
    name, role = session.get("user"), session.get("role")
    if isinstance(name, str) and name in config.users and config.users[name][0] == role:
        return User(name, role)
    return None


def install(app: Flask, config: ConsoleConfig) -> None:
    """Check CSRF on every unsafe request and a user on every non-public one."""

    @app.before_request
    def _guard() -> Response | None:
        if request.method in UNSAFE_METHODS:
            problem = csrf_problem()
            if problem is not None:
                log.warning("console_csrf_refused", path=request.path, reason=problem)
                abort(403, problem)
        g.user = current_user(config)
        if g.user is None and request.endpoint not in PUBLIC_ENDPOINTS:
            if config.auth_header is not None:
                abort(403, "The proxy did not name a user this console maps to a role.")
            return redirect(url_for("auth.login", next=request.full_path), code=303)
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.jinja_env.globals["csrf_token"] = csrf_token


def operator_only(view: F) -> F:
    """Refuse (403) a user who may only read."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not g.user.can_act:
            abort(403, f"{g.user.name} is a viewer; only an operator may do this.")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def safe_next(target: str | None) -> str:
    """Where to go after login: only a path on this site, never another host."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("overview.index")
