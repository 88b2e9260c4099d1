"""The Temporal flag: whether non-streaming requests run as workflows. Flipped at runtime, persisted, and
followed by every replica sharing the database (within ``poll_s``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from tokenhub.store import SettingsStore

log = structlog.get_logger(__name__)
KEY = "temporal_enabled"


class TemporalFlag:
    """``TOKENHUB_TEMPORAL_ENABLED`` is only the start value; a value set since (and persisted) wins."""

    def __init__(
        self,
        store: SettingsStore,
        initial: bool,
        on_enable: Callable[[], Awaitable[None]] | None = None,
        *,
        poll_s: float = 1.0,
    ) -> None:
        """``on_enable`` runs whenever the flag is (or becomes) on: it starts the Temporal connection."""
        self._store = store
        self._on_enable = on_enable
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self.enabled = initial

    async def start(self) -> None:
        """Load the persisted value, then follow changes other replicas make."""
        await self._apply(await self._store.get_setting(KEY))
        self._task = asyncio.create_task(self._watch(), name="temporal-flag-watch")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def set(self, enabled: bool) -> None:
        await self._store.set_setting(KEY, "true" if enabled else "false")
        await self._apply("true" if enabled else "false")

    async def _apply(self, persisted: str | None) -> None:
        if persisted is not None:
            self.enabled = persisted == "true"
        if self.enabled and self._on_enable is not None:
            await self._on_enable()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                persisted = await self._store.get_setting(KEY)
                if persisted is not None and (persisted == "true") != self.enabled:
                    log.warning("temporal_flag_changed_elsewhere", enabled=persisted == "true")
                    await self._apply(persisted)
            except Exception:  # a store outage must not end the watch: the flag in memory stays
                log.exception("temporal_flag_refresh_failed")
