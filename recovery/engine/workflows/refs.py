"""Resolving `${input.a.b}` and `${steps.charge.body.id}` inside a step's configuration.

A string that is exactly one reference becomes the referenced value as it is (a number stays
a number, an object an object); a reference inside a longer string is put in as text. A
reference that does not resolve is an `UnresolvedReference` sentence naming it and what was missing,
and the step fails before it runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from recovery.config.workflows import REFERENCE, parse_reference


class UnresolvedReference(ValueError):
    """A `${...}` reference names a value the run does not have."""


def _lookup(expression: str, context: Mapping[str, Any]) -> Any:
    root, parts = parse_reference(expression)
    value: Any = context[root]
    walked = root
    for part in parts:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            what = (f"step {part!r} has no output (it did not succeed)" if walked == "steps"
                    else f"{walked} has no {part!r}")
            raise UnresolvedReference(f"The reference '${{{expression}}}' cannot be resolved: "
                                      f"{what}.")
        walked = f"{walked}.{part}"
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def resolve(value: Any, context: Mapping[str, Any]) -> Any:
    """`value` with every reference replaced; `context` is {"input": ..., "steps": {...}}."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole is not None:
            return _lookup(whole.group(1).strip(), context)
        return REFERENCE.sub(lambda m: _as_text(_lookup(m.group(1).strip(), context)), value)
    if isinstance(value, Mapping):
        return {key: resolve(item, context) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(item, context) for item in value]
    return value
