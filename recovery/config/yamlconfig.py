"""Reading a YAML configuration file strictly (a key given twice is refused), and showing a
YAML value in an error message. The files' models are `recovery.config.file_models` and
`recovery.config.workflow_models`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml


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
