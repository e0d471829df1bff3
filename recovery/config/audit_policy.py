"""An integration's `audit:` block: which request values displays may show.

A model of the integrations file; the redaction that applies it is `recovery.core.redact`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

NEVER_SHOWN_HEADERS = frozenset({"cookie", "set-cookie"})


def never_shown(header: str) -> bool:
    """Whether a header's value stays hidden even when an integration lists it."""
    lowered = header.lower()
    return lowered.endswith("authorization") or lowered in NEVER_SHOWN_HEADERS


@dataclass(frozen=True)
class AuditPolicy:
    """Which request values an integration allows displays to show (its `audit:` block).

    Parameter names match exactly, header names in any case; body fields are dotted paths
    (`order.amount`) that walk through objects and, for arrays on the way, through each item.
    """

    show_params: frozenset[str] = frozenset()
    show_headers: frozenset[str] = frozenset()  # lower case
    show_body_fields: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def of(cls, show_params: Iterable[str] = (), show_headers: Iterable[str] = (),
           show_body_fields: Iterable[str] = ()) -> AuditPolicy:
        """A policy from plain names; ValueError with a sentence for a header never shown."""
        headers = frozenset(name.lower() for name in show_headers)
        never = sorted(name for name in headers if never_shown(name))
        if never:
            raise ValueError(f"lists {never[0]!r}, a header that carries credentials and is "
                             "never shown (an Authorization value shows its scheme only); "
                             "remove it")
        return cls(frozenset(show_params), headers,
                   tuple(tuple(path.split(".")) for path in show_body_fields))


#: The default: names of headers and parameters, no values, no body.
HIDE_ALL = AuditPolicy()
