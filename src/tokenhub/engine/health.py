"""Per-provider health: healthy → degraded → down (with a cooldown), from the outcomes of real calls.

Only failures that say something about the provider count: a client's bad request (an upstream 400)
or a prompt too long for the model is not the provider's fault.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tokenhub.engine.errors import UpstreamError

HealthState = Literal["healthy", "degraded", "down"]


@dataclass(frozen=True)
class ProviderHealth:
    provider_id: str
    state: HealthState
    consecutive_errors: int
    ewma_latency_ms: float | None
    error_rate: float
    cooldown_remaining_s: float
    last_error: str | None


class _Entry:
    __slots__ = ("consecutive_errors", "cooldown_until", "error_rate", "last_error", "latency_ms", "state")

    def __init__(self) -> None:
        self.state: HealthState = "healthy"
        self.consecutive_errors = 0
        self.latency_ms: float | None = None
        self.error_rate = 0.0
        self.cooldown_until = 0.0
        self.last_error: str | None = None


class HealthTracker:
    """``on_change(provider_id, old, new)`` is called on every state change. ``clock`` is monotonic
    seconds, injectable for tests."""

    def __init__(
        self,
        *,
        degraded_after: int = 2,
        down_after: int = 5,
        cooldown_s: float = 30.0,
        alpha: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, HealthState, HealthState], None] | None = None,
    ) -> None:
        self._degraded_after = degraded_after
        self._down_after = down_after
        self._cooldown_s = cooldown_s
        self._alpha = alpha
        self._clock = clock
        self._on_change = on_change
        self._entries: dict[str, _Entry] = {}

    def _entry(self, provider_id: str) -> _Entry:
        entry = self._entries.get(provider_id)
        if entry is None:
            entry = self._entries[provider_id] = _Entry()
        return entry

    def record_success(self, provider_id: str, latency_ms: float | None) -> None:
        """``latency_ms`` of a whole non-streaming call; None for streams, whose length says nothing of
        the provider's speed."""
        entry = self._entry(provider_id)
        if latency_ms is not None:
            entry.latency_ms = (
                latency_ms
                if entry.latency_ms is None
                else ((1 - self._alpha) * entry.latency_ms + self._alpha * latency_ms)
            )
        entry.error_rate *= 1 - self._alpha
        entry.consecutive_errors = 0
        entry.cooldown_until = 0.0
        self._set_state(provider_id, entry, "healthy")

    def record_failure(self, provider_id: str, error: UpstreamError) -> None:
        if not counts_against_provider(error):
            return
        entry = self._entry(provider_id)
        entry.error_rate = (1 - self._alpha) * entry.error_rate + self._alpha
        entry.last_error = str(error)
        now = self._clock()
        if error.error_class == "rate_limited":
            # The provider told us when to come back; it is not broken, so the state stays.
            wait = error.retry_after if error.retry_after is not None else 1.0
            entry.cooldown_until = max(entry.cooldown_until, now + wait)
            return
        entry.consecutive_errors += 1
        if entry.consecutive_errors >= self._down_after:
            entry.cooldown_until = now + self._cooldown_s
            self._set_state(provider_id, entry, "down")
        elif entry.consecutive_errors >= self._degraded_after:
            self._set_state(provider_id, entry, "degraded")

    def is_available(self, provider_id: str) -> bool:
        """False while the provider is cooling down (down, or told us to back off)."""
        entry = self._entries.get(provider_id)
        return entry is None or self._clock() >= entry.cooldown_until

    def retry_after(self, provider_id: str) -> float:
        entry = self._entries.get(provider_id)
        return 0.0 if entry is None else max(0.0, entry.cooldown_until - self._clock())

    def latency_ms(self, provider_id: str) -> float | None:
        """The provider's moving-average latency of non-streaming calls, None before the first."""
        entry = self._entries.get(provider_id)
        return None if entry is None else entry.latency_ms

    def error_rate(self, provider_id: str) -> float:
        entry = self._entries.get(provider_id)
        return 0.0 if entry is None else entry.error_rate

    def snapshot(self, provider_id: str) -> ProviderHealth:
        entry = self._entries.get(provider_id) or _Entry()
        return ProviderHealth(
            provider_id=provider_id,
            state=entry.state,
            consecutive_errors=entry.consecutive_errors,
            ewma_latency_ms=entry.latency_ms,
            error_rate=entry.error_rate,
            cooldown_remaining_s=max(0.0, entry.cooldown_until - self._clock()),
            last_error=entry.last_error,
        )

    def _set_state(self, provider_id: str, entry: _Entry, state: HealthState) -> None:
        if entry.state != state:
            old, entry.state = entry.state, state
            if self._on_change is not None:
                self._on_change(provider_id, old, state)


def counts_against_provider(error: UpstreamError) -> bool:
    """Whether a failure says the provider is unwell (as opposed to the request being bad)."""
    if error.error_class == "context_overflow":
        return False
    return not (error.error_class == "fatal" and error.status in (400, 404, 413, 422))
