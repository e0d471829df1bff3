"""Failed logins slow down a password guesser: a few per client and user name, then a pause.

Counts live in this process (the console runs as one process) and are bounded: entries older
than the window are dropped, and the map never holds more than MAX_KEYS entries.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_FAILURES = 5
WINDOW_S = 300.0
MAX_KEYS = 10_000


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S) -> None:
        self._clock = clock
        self._max = max_failures
        self._window = window_s
        self._lock = threading.Lock()
        self._failures: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def wait_s(self, client: str, name: str) -> float:
        """Seconds until this client may try this user name again (0: now)."""
        with self._lock:
            recent = self._recent((client, name))
            if len(recent) < self._max:
                return 0.0
            return max(recent[0] + self._window - self._clock(), 0.0)

    def failed(self, client: str, name: str) -> None:
        with self._lock:
            key = (client, name)
            self._failures[key] = [*self._recent(key), self._clock()]
            self._failures.move_to_end(key)
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, client: str, name: str) -> None:
        with self._lock:
            self._failures.pop((client, name), None)

    def _recent(self, key: tuple[str, str]) -> list[float]:
        since = self._clock() - self._window
        return [at for at in self._failures.get(key, []) if at > since][-self._max:]


def minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))
