"""The integration task's return value: one short line for the worker log and Flower."""

from __future__ import annotations

import pytest

from recovery.core.message import Progress
from recovery.core.step import Step
from recovery.engine.outcome import outcome_line


@pytest.mark.parametrize(("step", "line"), [
    (Step("succeeded", Progress(), 1, http_status=200), "succeeded, HTTP 200"),
    (Step("succeeded", Progress(), 2, http_status=201, strategy="server-error-circuit"),
     "succeeded, HTTP 201, server-error-circuit"),
    (Step("degraded", Progress(), 3, http_status=200, strategy="graceful-degradation",
          fallback="cache"), "degraded, HTTP 200, cache fallback"),
    (Step("dead", Progress(), 4, strategy="dead-letter-queue"), "dead, dead-letter-queue"),
    (Step("duplicate", Progress(), 0), "duplicate"),
])
def test_the_outcome_line_names_status_http_status_and_how(step: Step, line: str) -> None:
    assert outcome_line(step) == line
