"""The value rules of the configuration files' models, each refusing with today's phrase.

A rule is metadata on an `Annotated` type, e.g. `Annotated[int, Whole(1, 100)]`: it checks the
raw YAML value before pydantic does and raises a `PydanticCustomError` whose context holds the
problem ("must be from 1 to 100, got 0"); `recovery.config.file_errors` turns that into the
sentence naming the file, the entry and the key. The base type plus `schema()` give the JSON
Schema editors read. `FileModel` is the base of every mapping in the files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from recovery.config.settings import MAX_COUNT, MAX_MS
from recovery.config.yamlconfig import show_value

#: The error type of a refused value (context: `problem`, and `at`, a key below the field).
REFUSED = "config"
#: The error type of an unknown key (context: `at`, the key; `note`, the known keys).
UNKNOWN = "config_unknown"


def refuse(problem: str, at: str = "") -> NoReturn:
    raise PydanticCustomError(REFUSED, "{problem}", {"problem": problem, "at": at})


def default(value: Any) -> Any:
    """An optional key (None in the model) whose default, shown in the schema, is `value`."""
    return Field(None, json_schema_extra={"default": value})


def choice_problem(options: tuple[str, ...], value: Any) -> str:
    return f"must be one of {', '.join(options)}, got {show_value(value)}"


def _tidy(schema: dict[str, Any]) -> None:
    """Descriptions on one line (docstrings wrap), and no default for a key whose default
    comes from the environment, which the schema cannot know."""
    for part in (schema, *schema.get("properties", {}).values()):
        if "description" in part:
            part["description"] = " ".join(part["description"].split())
        if "default" in part and part["default"] is None:
            del part["default"]


class FileModel(BaseModel):
    """A mapping of a configuration file: unknown keys refused first, naming the known ones;
    no value coerced (YAML's "5" is not a number, true is not 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              use_attribute_docstrings=True,
                              json_schema_extra=_tidy)
    #: Said after an unknown key, e.g. " for a fallback of type 'api'".
    unknown_key_note: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    known = ", ".join(sorted(cls.model_fields))
                    raise PydanticCustomError(UNKNOWN, "unknown key {at}", {
                        "at": str(key), "note": f"{cls.unknown_key_note} (known keys: {known})"})
        return data


class Rule:
    """Checks (and may normalise) a raw value before the base type validates it."""

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        """What the rule adds to the base type's JSON Schema."""
        return {}

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), **self.schema()}


@dataclass(frozen=True)
class Whole(Rule):
    minimum: int
    maximum: int
    unit: str = ""

    def check(self, value: Any) -> int:
        suffix = f" {self.unit}" if self.unit else ""
        if isinstance(value, bool) or not isinstance(value, int):
            refuse(f"must be a whole number{suffix}, got {show_value(value)}")
        if not self.minimum <= value <= self.maximum:
            refuse(f"must be from {self.minimum} to {self.maximum}{suffix}, got {value}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True)
class Number(Rule):
    minimum: float
    maximum: float

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            refuse(f"must be a number, got {show_value(value)}")
        if not self.minimum <= value <= self.maximum:  # also refuses NaN
            refuse(f"must be from {self.minimum:g} to {self.maximum:g}, got {value!r}")
        return float(value)

    def schema(self) -> dict[str, Any]:
        return {"minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True)
class FractionOrFlag(Rule):
    """A fraction 0..1, where true means `default` and false means 0."""

    default: float

    def check(self, value: Any) -> float:
        if isinstance(value, bool):
            return self.default if value else 0.0
        return Number(0.0, 1.0).check(value)

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "boolean"}]}


class Flag(Rule):
    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            refuse(f"must be true or false, got {show_value(value)}")
        return value


class Text(Rule):
    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            refuse(f"must be a non-empty string, got {show_value(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"minLength": 1}


@dataclass(frozen=True)
class Choice(Rule):
    options: tuple[str, ...]

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            refuse(choice_problem(self.options, value))
        return value

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.options)}


@dataclass(frozen=True)
class Tag(Rule):
    """The `type` key that picks a member of a discriminated union, checked as a choice."""

    options: tuple[str, ...]

    def check(self, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, Mapping) else None
        if isinstance(value, Mapping) and not (isinstance(kind, str) and kind in self.options):
            refuse(choice_problem(self.options, kind), at="type")
        return value


@dataclass(frozen=True)
class Pattern(Rule):
    """A string matching `pattern`; `problem` is said with the value shown after it."""

    pattern: re.Pattern[str]
    problem: str

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            refuse(f"{self.problem}, got {show_value(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"pattern": f"^(?:{self.pattern.pattern})$"}


@dataclass(frozen=True)
class Names(Rule):
    """A list of strings; `what` says what it should be, e.g. "a list of step ids"."""

    what: str

    def check(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            refuse(f"must be {self.what}, got {show_value(value)}")
        return value


@dataclass(frozen=True)
class Each(Rule):
    """Every item of a list matches `pattern`, else `must list names such as {example}`."""

    pattern: re.Pattern[str]
    example: str

    def check(self, value: Any) -> Any:
        if not isinstance(value, list):
            refuse(f"must be a list of names such as [{self.example}], got {show_value(value)}")
        for item in value:
            if not isinstance(item, str) or not self.pattern.fullmatch(item):
                refuse(f"must list names such as {self.example}, got {show_value(item)}")
        return value


@dataclass(frozen=True)
class NonEmptyList(Rule):
    what: str

    def check(self, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            refuse(f"must be a non-empty list of {self.what}, got {show_value(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"minItems": 1}


class StringMap(Rule):
    """A mapping of names to strings (header templates)."""

    def check(self, value: Any) -> Any:
        if not isinstance(value, Mapping):
            refuse(f"must be a mapping of names to strings, got {show_value(value)}")
        for name, item in value.items():
            if not isinstance(name, str) or not isinstance(item, str):
                refuse(f"must be a string, got {show_value(item)}", at=str(name))
        return value


Count = Annotated[int, Whole(1, MAX_COUNT)]
Millis = Annotated[int, Whole(1, MAX_MS, "ms")]
MillisOrZero = Annotated[int, Whole(0, MAX_MS, "ms")]
Bool = Annotated[bool, Flag()]
NonEmptyText = Annotated[str, Text()]
