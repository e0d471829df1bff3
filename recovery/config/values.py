"""Checks and displays of single values, shared by the settings and the integrations file.

Every display hides what may be a secret (a URL's password or query) and is shortened, so an
error message can quote what it refused without leaking or flooding the log.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def show(value: str) -> str:
    """Quote a value for an error message, shortened so a huge value cannot flood the log."""
    if len(value) > 80:
        value = value[:77] + "..."
    return repr(value)


def is_http_url(value: str) -> bool:
    """True for an absolute http:// or https:// URL that names a host (and a valid port)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def base_url_problem(url: str) -> tuple[str, str] | None:
    """Why an http(s) URL cannot root an integration's requests, or None: (what is wrong, what
    to do), both phrases.

    User information would be sent as credentials with every call (and shown wherever the URL
    is); a query string or fragment would end up in the middle of every joined URL.
    """
    if "@" in urlsplit(url).netloc:
        return ("must not carry user information (user:password@)",
                "put credentials in the integration's headers instead")
    if "?" in url:
        return ("must not have a query string ('?')",
                "pass query parameters with each job (params) instead")
    if "#" in url:
        return "must not have a fragment ('#')", "remove it"
    return None


def shown_base_url(url: str) -> str:
    """A URL for an error message with its user information and query hidden (they may hold
    secrets)."""
    hidden = re.sub(r"(://)[^/?#]*@", r"\1***@", url)
    if "?" in hidden:
        hidden = hidden.split("?", 1)[0] + "?..."
    return show(hidden)


def hide_password(url: str) -> str:
    """Replace the password in `scheme://user:password@host` so errors never print it."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
