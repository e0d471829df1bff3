"""Every Lua script of the shared state, loaded in one place.

The scripts live beside this module as `.lua` files (package data), so an editor highlights
them and a reviewer reads them whole; `load(name)` returns one file's text and `render` fills
in the `${placeholders}` of a script that shares constants with Python.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template


@cache
def load(name: str) -> str:
    """The text of `name.lua` from this folder (read once per process)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text("utf-8")


def render(name: str, **values: object) -> str:
    """`name.lua` with its `${placeholders}` filled in (constants shared with Python)."""
    return Template(load(name)).substitute({key: str(value) for key, value in values.items()})
