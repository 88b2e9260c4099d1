"""A circuit breaker for Temporal faults (never for provider errors, which are results).

closed → (``threshold`` consecutive faults) → open → (after ``cooldown_s``) → half_open: one probe is let
through; its success closes the breaker, its failure opens it again. The clock is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[BreakerState, int] = {"closed": 0, "open": 1, "half_open": 2}


class Breaker:
    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """Whether a request may try Temporal now. In half_open, only one probe at a time."""
        if self._state == "closed":
            return True
        if self._state == "open":
            if self._clock() - self._opened_at < self._cooldown_s:
                return False
            self._set("half_open")
        if self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._probing = False
        self._set("closed")

    def record_failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self._state == "half_open" or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._set("open")

    def release(self) -> None:
        """The request that got ``allow()`` ended without telling (it was cancelled): free the probe."""
        self._probing = False

    def _set(self, state: BreakerState) -> None:
        if state != self._state:
            old, self._state = self._state, state
            if self._on_change is not None:
                self._on_change(old, state)
