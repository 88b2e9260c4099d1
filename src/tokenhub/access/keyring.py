"""The API keys this process accepts, held in memory and kept current from the store.

A request's key is checked with one HMAC and one dict lookup — no database on the request path. Changes
(a new key, a revocation, a rotation) apply at once in the process that made them and reach every other
process within ``poll_s``. When keys were last used is written in batches, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import structlog

from tokenhub.store.keys import KeyStore, new_secret
from tokenhub.store.models import ApiKeyRow

log = structlog.get_logger(__name__)
TOUCH_EVERY_S = 10.0


class KeyRing:
    def __init__(self, store: KeyStore, *, poll_s: float = 1.0) -> None:
        self._store = store
        self._poll_s = poll_s
        self._keys: dict[str, ApiKeyRow] = {}
        self._by_hash: dict[str, ApiKeyRow] = {}
        self._version = -1
        self._used: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def any(self) -> bool:
        """Whether any key exists (live or not): then, by default, every request needs one."""
        return bool(self._keys)

    async def start(self) -> None:
        await self._store.start()
        await self.reload()
        self._task = asyncio.create_task(self._watch(), name="keyring-watch")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush_used()

    def verify(self, secret: str) -> ApiKeyRow | None:
        """The live key ``secret`` belongs to, or None (unknown, revoked, expired, or a rotated-out secret
        past its grace)."""
        digest = self._store.hash(secret)
        key = self._by_hash.get(digest)
        if key is None:
            return None
        now = datetime.now(UTC)
        current = hmac.compare_digest(key.hash, digest)
        in_grace = (
            key.previous_hash is not None
            and hmac.compare_digest(key.previous_hash, digest)
            and (key.previous_valid_until is not None and now < key.previous_valid_until)
        )
        if not (current or in_grace) or key.revoked_at is not None:
            return None
        if key.expires_at is not None and now >= key.expires_at:
            return None
        self._used[key.id] = now
        return key

    def get(self, key_id: str) -> ApiKeyRow | None:
        return self._keys.get(key_id)

    def keys(self) -> list[ApiKeyRow]:
        return list(self._keys.values())

    def last_used(self, key_id: str) -> datetime | None:
        """When the key was last accepted, here or (as last written) anywhere."""
        key = self._keys.get(key_id)
        return self._used.get(key_id) or (key.last_used_at if key else None)

    async def create(self, row: ApiKeyRow) -> tuple[ApiKeyRow, str]:
        """Store a new key (``row.hash`` is filled in); returns it and its secret, shown this once."""
        secret = new_secret()
        key = replace(row, hash=self._store.hash(secret), prefix=secret[:11])
        await self._store.create(key)
        await self.reload()
        return key, secret

    async def rotate(self, key_id: str, grace: timedelta) -> tuple[ApiKeyRow, str]:
        """A new secret for the key; the old one keeps working for ``grace``."""
        key = self._require(key_id)
        secret = new_secret()
        rotated = replace(
            key,
            hash=self._store.hash(secret),
            prefix=secret[:11],
            previous_hash=key.hash,
            previous_valid_until=datetime.now(UTC) + grace,
        )
        await self._store.replace(rotated)
        await self.reload()
        return rotated, secret

    async def revoke(self, key_id: str) -> ApiKeyRow:
        key = replace(self._require(key_id), revoked_at=datetime.now(UTC))
        await self._store.replace(key)
        await self.reload()
        return key

    async def update(self, key: ApiKeyRow) -> None:
        await self._store.replace(key)
        await self.reload()

    async def reload(self) -> None:
        version = await self._store.version()
        rows = await self._store.all()
        self._keys = {k.id: k for k in rows}
        by_hash = {k.hash: k for k in rows}
        by_hash.update({k.previous_hash: k for k in rows if k.previous_hash})
        self._by_hash = by_hash
        self._version = version

    def _require(self, key_id: str) -> ApiKeyRow:
        key = self._keys.get(key_id)
        if key is None:
            raise KeyError(key_id)
        return key

    async def _watch(self) -> None:
        since_touch = 0.0
        while True:
            await asyncio.sleep(self._poll_s)
            since_touch += self._poll_s
            try:
                if await self._store.version() != self._version:
                    await self.reload()
                if since_touch >= TOUCH_EVERY_S:
                    since_touch = 0.0
                    await self._flush_used()
            except Exception:  # a store outage must not end the watch: the keys in memory stay valid
                log.exception("keyring_refresh_failed")

    async def _flush_used(self) -> None:
        used, self._used = self._used, {}
        if used:
            await self._store.touch(used.items())
