"""Reading a YAML configuration file strictly, with errors that name the file, entry and key.

`Section` wraps one mapping of a validated entry; every accessor checks type and range and raises
the caller's error class with a sentence such as
`/etc/x.yaml: integration 'payments': key 'retry.max_attempts' must be a whole number, got 'x'.`
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import yaml

from recovery.config.settings import MAX_COUNT, MAX_MS, is_http_url


def show_value(value: Any) -> str:
    """Describe a YAML value for an error message without flooding it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "nothing (null)"
    return "a mapping" if isinstance(value, Mapping) else f"a {type(value).__name__}"


class Section:
    """One mapping of an entry's YAML, read key by key with errors that name the key.

    `label` names the entry in messages, e.g. "integration 'payments'".
    """

    def __init__(
        self,
        data: Mapping[Any, Any],
        path: str,
        label: str,
        error: type[Exception],
        prefix: str = "",
    ) -> None:
        self.data, self.path, self.label, self.prefix = data, path, label, prefix
        self.error = error

    def fail(self, key: str, problem: str) -> NoReturn:
        raise self.error(
            f"{self.path}: {self.label}: key '{self.prefix}{key}' {problem}."
        )

    def reject_unknown(self, known: Iterable[str], what: str = "") -> None:
        for key in self.data:
            if key not in known:
                keys = ", ".join(sorted(known))
                where = f" for {what}" if what else ""
                raise self.error(
                    f"{self.path}: {self.label}: unknown key "
                    f"'{self.prefix}{key}'{where} (known keys: {keys})."
                )

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def whole(self, key: str, default: int, minimum: int, maximum: int, unit: str = "") -> int:
        value = self.data.get(key)
        if value is None:
            return default
        suffix = f" {unit}" if unit else ""
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be a whole number{suffix}, got {show_value(value)}")
        if not minimum <= value <= maximum:
            self.fail(key, f"must be from {minimum} to {maximum}{suffix}, got {value}")
        return value

    def count(self, key: str, default: int) -> int:
        return self.whole(key, default, 1, MAX_COUNT)

    def millis(self, key: str, default: int, minimum: int = 1) -> int:
        return self.whole(key, default, minimum, MAX_MS, "ms")

    def number(self, key: str, default: float, minimum: float, maximum: float) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"must be a number, got {show_value(value)}")
        if not minimum <= value <= maximum:  # also refuses NaN
            self.fail(key, f"must be from {minimum:g} to {maximum:g}, got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {show_value(value)}")
        return value

    def fraction_or_flag(self, key: str, default: float) -> float:
        """A fraction 0..1, where true means `default` and false means 0."""
        value = self.data.get(key)
        if isinstance(value, bool):
            return default if value else 0.0
        return self.number(key, default, 0.0, 1.0)

    def optional_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.fail(key, f"must be a non-empty string, got {show_value(value)}")
        return value

    def text(self, key: str, default: str) -> str:
        value = self.optional_text(key)
        return default if value is None else value

    def required_text(self, key: str) -> str:
        value = self.optional_text(key)
        if value is None:
            self.fail(key, "is missing")
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or value not in options:
            self.fail(key, f"must be one of {', '.join(options)}, got {show_value(value)}")
        return value

    def url(self, key: str) -> str:
        value = self.required_text(key).strip()
        if not is_http_url(value):
            self.fail(key, "must be an http:// or https:// URL with a host, "
                           f"e.g. https://api.example.com, got {show_value(value)}")
        return value

    def _child(self, key: str, value: Any) -> Section:
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a mapping, got {show_value(value)}")
        return Section(value, self.path, self.label, self.error, f"{self.prefix}{key}.")

    def section(self, key: str, known: Iterable[str]) -> Section | None:
        """The nested mapping under `key`, or None when it is absent or null."""
        value = self.data.get(key)
        if value is None:
            return None
        child = self._child(key, value)
        child.reject_unknown(known)
        return child

    def empty(self, key: str) -> Section:
        return Section({}, self.path, self.label, self.error, f"{self.prefix}{key}.")

    def sections(self, key: str) -> list[Section]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            self.fail(key, f"must be a list, got {show_value(value)}")
        return [self._child(f"{key}[{number}]", item) for number, item in enumerate(value, 1)]

    def string_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a mapping of names to strings, got {show_value(value)}")
        for name, item in value.items():
            if not isinstance(name, str) or not isinstance(item, str):
                self.fail(f"{key}.{name}", f"must be a string, got {show_value(item)}")
        return dict(value)


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key repeated in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str, error: type[Exception], missing_hint: str) -> Any:
    """Parse the YAML file at `path`; any problem becomes `error` naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=_StrictLoader)
    except FileNotFoundError:
        raise error(f"{path}: {missing_hint}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: the file cannot be read ({exc}).") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path}: not valid YAML: {exc.problem}{where}; fix the syntax.") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}.") from None
