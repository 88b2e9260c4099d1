"""The Temporal flag: whether non-streaming requests run as workflows. Flipped at runtime, persisted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tokenhub.store import SettingsStore

KEY = "temporal_enabled"


class TemporalFlag:
    """``TOKENHUB_TEMPORAL_ENABLED`` is only the start value; a value set since (and persisted) wins."""

    def __init__(
        self, store: SettingsStore, initial: bool, on_enable: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """``on_enable`` runs whenever the flag is (or loads as) on: it starts the Temporal connection."""
        self._store = store
        self._on_enable = on_enable
        self.enabled = initial

    async def load(self) -> None:
        persisted = await self._store.get_setting(KEY)
        if persisted is not None:
            self.enabled = persisted == "true"
        if self.enabled and self._on_enable is not None:
            await self._on_enable()

    async def set(self, enabled: bool) -> None:
        await self._store.set_setting(KEY, "true" if enabled else "false")
        self.enabled = enabled
        if enabled and self._on_enable is not None:
            await self._on_enable()
