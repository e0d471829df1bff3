"""Saying what is wrong in a configuration file: the first validation error as today's sentence.

`first_problem` reads where the error is from the document itself (mapping keys and list
indexes; pydantic's own parts of the location, such as a union's tag, drop out) and what the
problem is; the loaders put the file and the entry in front, e.g.
`/etc/x.yaml: integration 'payments': key 'retry.max_attempts' must be from 1 to 1000000, got 0.`
`Where` raises the same sentences for the checks that run after the models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from recovery.config.file_types import REFUSED, UNKNOWN
from recovery.config.yamlconfig import show_value

#: Mapping keys (str) and list indexes (int, from 0), from the document's root.
Place = tuple[str | int, ...]

_MAPPING_TYPES = ("model_type", "model_attributes_type", "dict_type")


def key_text(place: Sequence[str | int]) -> str:
    """`fallbacks[2].type`: keys joined by dots, list items numbered from 1."""
    text = ""
    for part in place:
        if isinstance(part, int):
            text += f"[{part + 1}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass(frozen=True)
class Problem:
    """The first thing wrong in a document."""

    place: Place
    #: What follows the key ("must be from 1 to 100, got 0"); for an unknown key, the note
    #: with the known keys.
    phrase: str
    unknown: bool = False
    missing: bool = False

    def tail(self, start: int) -> str:
        """The sentence after the entry's label, naming the keys from `place[start]` on."""
        key = key_text(self.place[start:])
        if self.unknown:
            return f"unknown key '{key}'{self.phrase}"
        return f"key '{key}' {self.phrase}"


def first_problem(error: ValidationError, document: Any) -> Problem:
    detail = error.errors(include_url=False)[0]
    kind, context = detail["type"], detail.get("ctx") or {}
    place = _place(document, detail["loc"], keep_last=kind == "missing")
    if context.get("at"):
        place += (context["at"],)
    if kind == UNKNOWN:
        return Problem(place, context["note"], unknown=True)
    return Problem(place, _phrase(detail), missing=kind == "missing")


def _phrase(detail: ErrorDetails) -> str:
    kind, value = detail["type"], detail["input"]
    if kind == REFUSED:
        return str((detail.get("ctx") or {})["problem"])
    if kind == "missing":
        return "is missing"
    if kind in _MAPPING_TYPES:
        return f"must be a mapping, got {show_value(value)}"
    if kind == "list_type":
        return f"must be a list, got {show_value(value)}"
    return f"is not valid ({detail['msg'].lower()}), got {show_value(value)}"


def _place(document: Any, loc: tuple[str | int, ...], keep_last: bool) -> Place:
    found: list[str | int] = []
    data = document
    for number, part in enumerate(loc):
        if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            found.append(part)
            data = data[part]
        elif isinstance(data, Mapping) and (key := _key(data, part)) is not None:
            found.append(str(key))
            data = data[key]
        elif keep_last and number == len(loc) - 1:
            found.append(str(part))
    return tuple(found)


def _key(data: Mapping[Any, Any], part: str | int) -> Any:
    """The document's key for a location part (a strategy's 503 is "503" in the model)."""
    return next((key for key in data if str(key) == str(part)), None)


@dataclass(frozen=True)
class Where:
    """An entry of a file, for the checks after the models: `fail` names file, entry and key."""

    path: str
    label: str
    error: type[Exception]
    prefix: str = ""

    def fail(self, key: str, problem: str) -> NoReturn:
        raise self.error(f"{self.path}: {self.label}: key '{self.prefix}{key}' {problem}.")

    def below(self, key: str) -> Where:
        """The same entry, for the keys under `key`."""
        return replace(self, prefix=f"{self.prefix}{key}.")
