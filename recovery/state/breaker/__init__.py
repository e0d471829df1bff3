"""The distributed circuit breaker (see `cluster.py` for how it works)."""

from recovery.state.breaker.cluster import ClusterBreaker
from recovery.state.breaker.types import (
    BreakerOpenError,
    BreakerSnapshot,
    Permit,
    TransitionListener,
)

__all__ = [
    "BreakerOpenError",
    "BreakerSnapshot",
    "ClusterBreaker",
    "Permit",
    "TransitionListener",
]
