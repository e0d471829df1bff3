"""Every Lua script of the shared state, loaded in one place.

The scripts live beside this module as `.lua` files (package data), so an editor highlights
them and a reviewer reads them whole; `load(name)` returns one file's text.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    """The text of `name.lua` from this folder (read once per process)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text("utf-8")
