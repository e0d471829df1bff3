"""The kinds of value a setting can hold, as pydantic field types with our own checks.

Each kind is `Annotated` metadata: it turns the text of one environment variable into the
field's value or refuses it with a phrase that follows the variable's name ("must be a whole
number, got 'abc'."); `load_settings` puts the name in front. A kind also gives the JSON Schema
of what the variable accepts.

A Python value (a default, or a field given when `Settings` is built in code) is turned back
into the text the environment would hold, so it goes through the very same checks.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from recovery.config.keys import check_keys
from recovery.config.values import show

#: Longest duration any millisecond setting may have; anything above is treated as a typo.
MAX_MS = 7 * 24 * 60 * 60 * 1000
#: Largest count (retries, thresholds, request limits) we accept.
MAX_COUNT = 1_000_000
#: Largest exponential-backoff factor we accept.
MAX_BACKOFF_FACTOR = 100.0
#: SERVE_TOKEN length bounds: long enough not to be guessed, short enough for one header.
SERVE_TOKEN_LENGTH = (16, 256)
#: Roles of the operator console: viewer reads, operator also acts.
CONSOLE_ROLES = ("viewer", "operator")

SPACE = " \t\r\n\f\v"  # str.strip() would also drop Unicode separators float() refuses
_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")  # RFC 6750 b64token
_CONSOLE_NAME = re.compile(r"[A-Za-z0-9._@*-]{1,64}")
_SECRET_HINT = "(not shown: it is a secret); generate one with `openssl rand -hex 32`"


def refusal(phrase: str) -> PydanticCustomError:
    """The validation error of a refused value; `phrase` follows the variable's name."""
    return PydanticCustomError("setting", phrase)


def as_text(value: object) -> str:
    """The text the environment would hold for `value` (None: unset or empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(":".join(item) if isinstance(item, tuple | list) else str(item)
                        for item in value)
    return str(value)


class SettingKind(ABC):
    """Base of the kinds: pydantic calls `parse` with the variable's text (see the module)."""

    @abstractmethod
    def parse(self, text: str) -> Any:
        """The field's value for `text`; raises `refusal(...)` when the text is not accepted."""

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string"}

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            lambda value: self.parse(as_text(value)))

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return self.json_schema()


@dataclass(frozen=True)
class Whole(SettingKind):
    """A whole number from `minimum` to `maximum`, in `unit` ("ms", "s", "bytes" or none)."""

    minimum: int
    maximum: int
    unit: str = ""

    def parse(self, text: str) -> int:
        stripped = text.strip(SPACE)
        if not _WHOLE.fullmatch(stripped):
            raise refusal(f"must be a whole number, got {show(text)}.")
        digits = stripped.lstrip("+-")
        negative = stripped.startswith("-")
        # Python refuses int() on very long digit strings; such a number is absurd anyway.
        value = int(stripped) if len(digits) <= 20 else (-1 if negative else self.maximum + 1)
        suffix = f" {self.unit}" if self.unit else ""
        if value < self.minimum:
            raise refusal(f"must be at least {self.minimum}{suffix}, got {show(text)}.")
        if value > self.maximum:
            limit = f"{self.maximum}{suffix}" + (" (7 days)" if self.unit in ("ms", "s") else "")
            raise refusal(f"must be at most {limit}, got {show(text)}; "
                          "a value this large is almost certainly a mistake.")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


Count = Annotated[int, Whole(1, MAX_COUNT)]
Millis = Annotated[int, Whole(1, MAX_MS, "ms")]


@dataclass(frozen=True)
class Factor(SettingKind):
    """A decimal growth factor from 1 to MAX_BACKOFF_FACTOR."""

    def parse(self, text: str) -> float:
        if not _DECIMAL.fullmatch(text.strip(SPACE)):
            raise refusal(f"must be a number such as 2 or 1.5, got {show(text)}.")
        value = float(text.strip(SPACE))
        if value < 1:
            raise refusal(f"must be at least 1 (1 keeps every delay the same), got {show(text)}.")
        if value > MAX_BACKOFF_FACTOR:
            raise refusal(f"must be at most {MAX_BACKOFF_FACTOR:g}, got {show(text)}; "
                          "a factor this large is almost certainly a mistake.")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "number", "minimum": 1, "maximum": MAX_BACKOFF_FACTOR}


@dataclass(frozen=True)
class Flag(SettingKind):
    """true/false, 1/0 or yes/no in any case; when `optional`, empty means None."""

    optional: bool = False

    def parse(self, text: str) -> bool | None:
        word = text.strip(SPACE).lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        if self.optional and not word:
            return None
        raise refusal(f"must be true or false (1/0 and yes/no also work), got {show(text)}.")

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Choice(SettingKind):
    """One of `choices`, in any case; with a `default`, an empty value is refused as such."""

    choices: tuple[str, ...]
    default: str | None = None

    def parse(self, text: str) -> str:
        word = text.strip(SPACE).lower()
        if self.default is not None and not word:
            raise refusal(f"must not be empty; unset it to use {self.default!r}.")
        if word not in self.choices:
            raise refusal(f"must be one of {', '.join(self.choices)}, got {show(text)}.")
        return word

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "enum": list(self.choices)}


@dataclass(frozen=True)
class Text(SettingKind):
    """Non-empty text (surrounding space dropped), matching `pattern` when one is given."""

    default: str
    pattern: re.Pattern[str] | None = None
    expected: str = ""  # what a value must be, for the error when `pattern` refuses it

    def parse(self, text: str) -> str:
        value = text.strip(SPACE)
        if not value:
            raise refusal(f"must not be empty; unset it to use {self.default!r}.")
        return _matched(value, self.pattern, self.expected)

    def json_schema(self) -> JsonSchemaValue:
        return _text_schema(self.pattern) | {"minLength": 1}


@dataclass(frozen=True)
class OptionalText(SettingKind):
    """Text or None (unset or empty), matching `pattern` when one is given."""

    pattern: re.Pattern[str] | None = None
    expected: str = ""

    def parse(self, text: str) -> str | None:
        value = text.strip(SPACE)
        return _matched(value, self.pattern, self.expected) if value else None

    def json_schema(self) -> JsonSchemaValue:
        return _text_schema(self.pattern)


def _matched(value: str, pattern: re.Pattern[str] | None, expected: str) -> str:
    if pattern is not None and not pattern.fullmatch(value):
        raise refusal(f"must be {expected}, got {show(value)}.")
    return value


def _text_schema(pattern: re.Pattern[str] | None) -> JsonSchemaValue:
    return {"type": "string"} | ({"pattern": f"^{pattern.pattern}$"} if pattern else {})


@dataclass(frozen=True)
class KeyPrefix(SettingKind):
    """The prefix of every Redis key, taken as given (spaces included, so they are refused)."""

    def parse(self, text: str) -> str:
        if not text or len(text) > 64 or any(ch.isspace() for ch in text):
            raise refusal("must be 1 to 64 characters without spaces, such as 'recovery:', "
                          f"got {show(text)}.")
        return text

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^\S+$"}


@dataclass(frozen=True)
class FernetKeys(SettingKind):
    """Comma-separated Fernet keys, or none; an error names the bad key's position only."""

    def parse(self, text: str) -> tuple[str, ...]:
        value = text.strip(SPACE)
        if not value:
            return ()
        try:
            return check_keys(value)
        except ValueError as exc:
            raise refusal(f"must be comma-separated Fernet keys; {exc}.") from None


@dataclass(frozen=True)
class Token(SettingKind):
    """An optional bearer token; errors never show its value."""

    def parse(self, text: str) -> str | None:
        value = text.strip(SPACE)
        if not value:
            return None
        low, high = SERVE_TOKEN_LENGTH
        if not low <= len(value) <= high:
            raise refusal(f"must be {low} to {high} characters long, got one of {len(value)} "
                          f"characters {_SECRET_HINT}.")
        if not _TOKEN.fullmatch(value):
            raise refusal(f"may hold only letters, digits and -._~+/=, got other characters "
                          f"{_SECRET_HINT}.")
        return value

    def json_schema(self) -> JsonSchemaValue:
        low, high = SERVE_TOKEN_LENGTH
        return {"type": "string", "minLength": low, "maxLength": high,
                "pattern": f"^{_TOKEN.pattern}$"}


@dataclass(frozen=True)
class SecretKey(SettingKind):
    """An optional signing key of at least `minimum` characters; errors never show it."""

    minimum: int

    def parse(self, text: str) -> str | None:
        value = text.strip(SPACE) or None
        if value is not None and len(value) < self.minimum:
            raise refusal(f"must be at least {self.minimum} characters, got {len(value)} (not "
                          "shown: it is a secret); generate one with `openssl rand -hex 32`.")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "minLength": self.minimum}


@dataclass(frozen=True)
class ConsolePairs(SettingKind):
    """`a:b[:c],...` entries of `parts` parts: a name, a console role, then the rest."""

    parts: int
    hint: str  # what an entry looks like, for the error

    def parse(self, text: str) -> tuple[tuple[str, ...], ...]:
        found: list[tuple[str, ...]] = []
        for index, item in enumerate(text.strip(SPACE).split(","), 1):
            if not item.strip():
                continue
            fields = [part.strip() for part in item.split(":", self.parts - 1)]
            if (len(fields) != self.parts or not _CONSOLE_NAME.fullmatch(fields[0])
                    or not all(fields)):
                raise refusal(f"entry {index} must look like {self.hint}.")
            if fields[1] not in CONSOLE_ROLES:
                raise refusal(f"entry {index} has the role {show(fields[1])}; use "
                              f"{' or '.join(CONSOLE_ROLES)}.")
            found.append(tuple(fields))
        return tuple(found)


@dataclass(frozen=True)
class ConsoleUsers(ConsolePairs):
    """`name:role:hash,...`, where each hash comes from `recovery-cli console hash-password`."""

    parts: int = 3
    hint: str = ("name:role:hash, the hash made by `recovery-cli console hash-password` (not "
                 "shown: it is a secret)")

    def parse(self, text: str) -> tuple[tuple[str, ...], ...]:
        users = super().parse(text)
        if any("$" not in fields[2] for fields in users):
            raise refusal("holds a password that is not a hash; make one with `recovery-cli "
                          "console hash-password` (the value is not shown).")
        return users
