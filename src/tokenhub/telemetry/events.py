"""An in-process event bus: publishers never wait, and a subscriber too slow to keep up is dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    timestamp: float


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.dropped = False

    def _offer(self, event: Event) -> bool:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True
            return False
        return True

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self.dropped:
            event = await self._queue.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        self._bus._subscribers.discard(self)


class EventBus:
    def __init__(self, subscriber_buffer: int = 256) -> None:
        self._subscribers: set[Subscription] = set()
        self._buffer = subscriber_buffer

    def subscribe(self) -> Subscription:
        subscription = Subscription(self, self._buffer)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        event = Event(event_type, data, time.time())
        for subscription in list(self._subscribers):
            if not subscription._offer(event):
                self._subscribers.discard(subscription)
