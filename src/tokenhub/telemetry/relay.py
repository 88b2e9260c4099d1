"""Events across processes: a ``tokenhub worker`` forwards its events through the store; gateways import
them into their own bus, so an admin watching ``/admin/v1/events`` sees what separate workers do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from tokenhub.telemetry.events import EventBus

log = structlog.get_logger(__name__)
KEEP = timedelta(minutes=10)


class RelayedEventLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


class RelayStore(Protocol):
    async def append(self, source: str, events: Sequence[tuple[datetime, str, dict[str, Any]]]) -> None: ...

    async def after(self, last_id: int, *, limit: int = 500) -> Sequence[RelayedEventLike]: ...

    async def last_id(self) -> int: ...

    async def prune(self, older_than: timedelta) -> None: ...


class EventForwarder:
    """In a worker process: every ``interval_s``, write the bus's new events to the store."""

    def __init__(self, bus: EventBus, store: RelayStore, source: str, *, interval_s: float = 0.5) -> None:
        self._bus = bus
        self._store = store
        self._source = source
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-forwarder")

    async def aclose(self) -> None:
        await _stop(self._task)

    async def _run(self) -> None:
        subscription = self._bus.subscribe(buffer=10_000)
        try:
            while True:
                await asyncio.sleep(self._interval)
                batch = [
                    (datetime.fromtimestamp(e.timestamp, UTC), e.type, e.data) for e in subscription.drain()
                ]
                if subscription.dropped:
                    log.warning("event_forwarder_fell_behind")
                    subscription.close()
                    subscription = self._bus.subscribe(buffer=10_000)
                try:
                    await self._store.append(self._source, batch)
                except Exception:  # a store outage loses these events (they are not request logs)
                    log.exception("event_forward_failed", events=len(batch))
        finally:
            subscription.close()


class EventImporter:
    """In a gateway: while anyone watches the bus, publish other processes' events from the store."""

    def __init__(self, bus: EventBus, store: RelayStore, source: str, *, interval_s: float = 0.5) -> None:
        self._bus = bus
        self._store = store
        self._source = source
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-importer")

    async def aclose(self) -> None:
        await _stop(self._task)

    async def _run(self) -> None:
        last = await self._store.last_id()
        rounds = 0
        while True:
            await asyncio.sleep(self._interval)
            rounds += 1
            try:
                if not self._bus.watched:
                    last = await self._store.last_id()  # nobody watching: skip what happens meanwhile
                    continue
                for event in await self._store.after(last):
                    last = event.id
                    if event.source != self._source:
                        self._bus.publish(event.type, {**event.data, "source": event.source})
                if rounds % 120 == 0:
                    await self._store.prune(KEEP)
            except Exception:  # a store outage must not end the import: it tries again next round
                log.exception("event_import_failed")


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
