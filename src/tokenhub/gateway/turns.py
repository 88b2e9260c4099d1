"""Streams in full flow take turns, so that no turn of the event loop runs long.

Every step of a request that has just arrived (its task starting, the upstream's head waking it, its first
write) waits for the loop's next turn, and a turn runs everything ready. A stream whose upstream sent a
burst is always ready: with 64 of them, one turn ran 64 batches of up to 64 events, and a new stream's
woken head waited ~10 ms in the queue behind them (measured on the bench machine at concurrency 64).

So after each batch a stream waits here, and each turn lets through only as many waiting streams as keep it
near ``turn_s``: fewer when turns run long, more (up to all) while they are short. When even one stream's
batch makes a turn long, the turn after it lets none through, so a new request's next step runs with no
batch ahead of it; never two such turns in a row, so every stream keeps moving. Everything else ready in a
turn — new requests, non-streaming ones, socket reads — runs as before.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

# Measured at concurrency 64 on the bench machine, 200-token streams (a new stream's time from entering the
# gateway to its first byte / gateway CPU per stream): every stream through each turn, 13 ms / 1.38 ms;
# turns near 1 ms, 2.3 ms / 1.51 ms; near 0.3 ms, 1.1 ms / 1.61 ms (an Intel VM). On an AMD EPYC VM, with
# batches of at most 16 events (engine/providers/upstream.py) instead of 64, 0.1 ms turns took the first
# token's added time from 1.7-3.2 to 1.4-1.7 ms (bench, alternating with the 0.3 ms / 64 code) for ~10 %
# more CPU per bursting stream: a new stream waits on the loop twice (its task's start, its upstream's
# answer waking it), each about one turn. 50 us turns were no faster to the first token, and with 500
# streams open spread their durations more (added 521-1342 against 721-808 ms, three runs each).
# A turn with no stream let through after each long one: added first token 0.88-1.24 ms (one slow spell
# 3.78) against 2.10-2.56 (4.81), six runs each alternating, same CPU per stream and stream rate. With
# that rule, batches of up to 128 events instead of 16 cost a new stream nothing (providers/upstream.py).
TURN_S = 0.0001


class StreamTurns:
    def __init__(
        self, turn_s: float = TURN_S, most: int = 64, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._turn_s = turn_s
        self._most = most
        self._clock = clock
        self._per_turn = most
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._last = 0.0
        self._released = 0

    async def take(self) -> None:
        """Wait for this stream's next turn."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a first use, or a new loop (tests): nothing of an old one carries over
            self._loop, self._scheduled = loop, False
            self._waiting.clear()
        future = loop.create_future()
        self._waiting.append(future)
        if not self._scheduled:
            self._scheduled = True
            self._last = self._clock()
            loop.call_soon(self._release)
        await future

    def _release(self) -> None:
        """Once a turn while streams wait: let some through, sized by how long the last turn took."""
        now = self._clock()
        took, self._last = now - self._last, now
        if took > self._turn_s:
            self._per_turn = self._per_turn // 2 or (0 if self._released else 1)
        elif self._per_turn < self._most:
            self._per_turn += 1
        released = 0
        waiting = self._waiting
        while waiting and released < self._per_turn:
            future = waiting.popleft()
            if not future.done():  # a stream cancelled while it waited
                future.set_result(None)
                released += 1
        self._released = released
        if waiting and self._loop is not None:
            self._loop.call_soon(self._release)
        else:
            self._scheduled = False
