"""The retry budget's configuration: how many retries an integration may schedule per window.

A model of the integrations file, so it lives with the other models; the budget itself (the
shared counters and their Lua script) is `recovery.state.budget`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Slots per window. More slots slide more smoothly and cost a little more per decision.
SLOTS = 10
MIN_WINDOW_MS = 100
MAX_WINDOW_MS = 3_600_000
MAX_RATIO = 10.0
_EPSILON = 1e-9  # so that 0.1 * 30 first attempts still allow 3 retries


@dataclass(frozen=True)
class RetryBudgetConfig:
    """How many retries an integration may schedule per window, cluster-wide.

    Retries in the window (the one being scheduled included) may be at most
    `floor + ratio * first attempts in the window`. `enabled=False` lets every retry through.
    """

    ratio: float = 0.2
    floor: int = 3
    window_ms: int = 10_000
    enabled: bool = True

    def __post_init__(self) -> None:
        ratio_ok = isinstance(self.ratio, int | float) and not isinstance(self.ratio, bool)
        if not ratio_ok or not 0.0 <= self.ratio <= MAX_RATIO:
            raise ValueError(
                f"The retry budget ratio must be a number from 0 to {MAX_RATIO:g} (0.2 allows "
                f"retries for 20% of first attempts), got {self.ratio!r}."
            )
        if isinstance(self.floor, bool) or not isinstance(self.floor, int) or self.floor < 0:
            raise ValueError(
                f"The retry budget floor must be a whole number of retries, 0 or more, "
                f"got {self.floor!r}."
            )
        if (isinstance(self.window_ms, bool) or not isinstance(self.window_ms, int)
                or not MIN_WINDOW_MS <= self.window_ms <= MAX_WINDOW_MS):
            raise ValueError(
                f"The retry budget window must be a whole number of milliseconds from "
                f"{MIN_WINDOW_MS} to {MAX_WINDOW_MS}, got {self.window_ms!r}."
            )

    @property
    def slot_ms(self) -> int:
        return math.ceil(self.window_ms / SLOTS)

    def allowance(self, first_attempts: int) -> int:
        """Retries allowed in a window that holds `first_attempts` first attempts."""
        return math.floor(self.floor + self.ratio * first_attempts + _EPSILON)


DEFAULT_RETRY_BUDGET = RetryBudgetConfig()
