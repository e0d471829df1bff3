"""The kinds of setting that hold a URL: http(s) endpoints, the database, Redis, the broker.

See `recovery.config.setting_types` for how a kind works; an error never shows a URL's password.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic.json_schema import JsonSchemaValue

from recovery.config import redis_urls
from recovery.config.setting_types import SPACE, SettingKind, refusal
from recovery.config.values import (
    base_url_problem,
    hide_password,
    is_http_url,
    show,
    shown_base_url,
)

_DATABASE_PREFIXES = ("postgresql://", "postgresql+psycopg://", "sqlite:///")
REDIS_SCHEMES = ("redis", "rediss", "unix")
#: RabbitMQ's schemes (recovery.config.broker tells the broker's kind by them).
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


@dataclass(frozen=True)
class HttpUrl(SettingKind):
    """An http(s) URL with a host; when `optional`, empty means None."""

    optional: bool = False

    def parse(self, text: str) -> str | None:
        value = text.strip(SPACE)
        if self.optional and not value:
            return None
        if not is_http_url(value):
            raise refusal("must be an http:// or https:// URL with a host, "
                          f"e.g. https://api.example.com, got {show(hide_password(value))}.")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "format": "uri"}


@dataclass(frozen=True)
class BaseUrl(HttpUrl):
    """An http(s) URL that can root an integration's requests (`base_url_problem`)."""

    def parse(self, text: str) -> str | None:
        value = super().parse(text)
        problem = None if value is None else base_url_problem(value)
        if problem:
            what, hint = problem
            raise refusal(f"{what}, got {shown_base_url(str(value))}; {hint}.")
        return value


@dataclass(frozen=True)
class WebhookUrl(SettingKind):
    """An optional http(s) URL shown without its query (a webhook's often holds a token)."""

    def parse(self, text: str) -> str | None:
        value = text.strip(SPACE) or None
        if value is not None and not is_http_url(value):
            raise refusal("must be an http:// or https:// URL with a host, such as "
                          f"https://hooks.example.com/alerts, got {shown_base_url(value)}.")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "format": "uri"}


@dataclass(frozen=True)
class DatabaseUrl(SettingKind):
    """A PostgreSQL URL (psycopg 3 drives it) or a SQLite file for demos."""

    def parse(self, text: str) -> str:
        value = text.strip(SPACE)
        if not value.startswith(_DATABASE_PREFIXES) or value in _DATABASE_PREFIXES:
            raise refusal("must be a postgresql://, postgresql+psycopg:// or sqlite:///path "
                          f"URL, got {show(hide_password(value))}.")
        return value


@dataclass(frozen=True)
class RedisUrl(SettingKind):
    """One Redis (redis://, rediss://, unix://), a Cluster or a Sentinel-named master."""

    def parse(self, text: str) -> str:
        value = text.strip(SPACE)
        if redis_urls.kind_of(value) in ("cluster", "sentinel"):
            return _state_store_url(value)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in REDIS_SCHEMES or not (parts.hostname or parts.path):
            raise refusal("must be a redis://host:port/db, rediss://, unix://, redis+cluster:// "
                          f"or redis+sentinel:// URL, got {show(hide_password(value))}.")
        return value


def _state_store_url(value: str) -> str:
    """A Redis Cluster or Sentinel URL (recovery.config.redis_urls), checked without sockets."""
    try:
        redis_urls.parse(value)
    except redis_urls.RedisUrlError as exc:
        raise refusal(f"is not a usable Redis Cluster or Sentinel URL: {exc}. It was "
                      f"{show(hide_password(value))}; the README (Running in production) shows "
                      "the forms.") from None
    return value


@dataclass(frozen=True)
class BrokerUrl(SettingKind):
    """RabbitMQ (amqp://) or a Redis of its own; None (unset) means REDIS_URL is the broker."""

    def parse(self, text: str) -> str | None:
        value = text.strip(SPACE) or None
        if value is not None and url_scheme(value) not in AMQP_SCHEMES + REDIS_SCHEMES:
            raise refusal("must be an amqp://, amqps:// (RabbitMQ) or redis:// URL, got "
                          f"{show(hide_password(value))}.")
        return value


def url_scheme(url: str) -> str:
    """The lower-case scheme of `url`, or "" when it has none."""
    return url.split("://", 1)[0].lower() if "://" in url else ""
