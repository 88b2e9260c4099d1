"""An in-process event bus: publishers never wait, and a subscriber too slow to keep up is dropped."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    timestamp: float


class Subscription:
    """One subscriber's queue. Iterate it for events; it ends once the subscriber was dropped (fell
    ``maxsize`` events behind) or closed, after the events queued before that."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: deque[Event] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.dropped = False

    def _offer(self, event: Event) -> bool:
        if len(self._queue) >= self._maxsize:
            self.dropped = True
        else:
            self._queue.append(event)
        self._ready.set()
        return not self.dropped

    def drain(self) -> list[Event]:
        """Everything queued so far, without waiting."""
        events = list(self._queue)
        self._queue.clear()
        return events

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self.dropped:
                return
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        self.dropped = True
        self._ready.set()


class EventBus:
    def __init__(self, subscriber_buffer: int = 256) -> None:
        self._subscribers: set[Subscription] = set()
        self._buffer = subscriber_buffer

    def subscribe(self, *, buffer: int | None = None) -> Subscription:
        """A new subscriber; if it falls ``buffer`` events behind it is dropped (publishers never wait)."""
        subscription = Subscription(self, buffer or self._buffer)
        self._subscribers.add(subscription)
        return subscription

    @property
    def watched(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        event = Event(event_type, data, time.time())
        for subscription in list(self._subscribers):
            if not subscription._offer(event):
                self._subscribers.discard(subscription)
