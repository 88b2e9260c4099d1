"""Time a request spends waiting on upstream providers — what the gateway's own overhead excludes.

A request starts a clock (``start_clock``); the engine charges each provider wait to the clock of the
request it serves (``charge``), through a context variable, so nothing has to be passed along. Tasks a
request spawns (an orchestration's parallel calls) copy the context and so charge the same clock. Work done
in another context — a Temporal activity — starts its own clock and reports it back as data.
"""

from __future__ import annotations

from contextvars import ContextVar


class UpstreamClock:
    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0


_current: ContextVar[UpstreamClock | None] = ContextVar("tokenhub_upstream_clock", default=None)


def start_clock() -> UpstreamClock:
    """A new clock for the work running in this context (and the tasks it starts from now on)."""
    clock = UpstreamClock()
    _current.set(clock)
    return clock


def charge(seconds: float) -> None:
    """Count ``seconds`` of waiting on an upstream against the current request, if it keeps a clock."""
    clock = _current.get()
    if clock is not None:
        clock.seconds += seconds
