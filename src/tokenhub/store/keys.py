"""API keys in the store: created, listed, rotated, revoked. Secrets are never stored, only keyed hashes.

The hash is HMAC-SHA256 keyed with a server secret (``TOKENHUB_SECRET_KEY``, or else a random pepper kept
in the database). Keys are 240 random bits, so a slow password KDF (bcrypt, argon2) would buy nothing
against guessing while costing milliseconds of CPU on every request; the keyed hash means a copy of the
database alone cannot even check a guess (when the secret lives outside it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Row, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tokenhub.store.models import ApiKeyRow
from tokenhub.store.schema import api_keys, runtime_settings
from tokenhub.store.sql import SQLStore

PREFIX = "th-"
VERSION_KEY = "keys_version"
PEPPER_KEY = "key_pepper"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(30)


class KeyStore:
    def __init__(self, store: SQLStore, secret_key: str | None) -> None:
        self._store = store
        self._secret_key = secret_key
        self._pepper: bytes | None = secret_key.encode() if secret_key else None

    async def start(self) -> None:
        """Find (or make, once) the pepper that keys the hashes when no secret key is configured."""
        if self._pepper is not None:
            return
        candidate = secrets.token_hex(32)
        insert = sqlite.insert if self._store.is_sqlite else postgresql.insert
        async with self._store.engine.begin() as conn:
            await conn.execute(
                insert(runtime_settings)
                .values(key=PEPPER_KEY, value=candidate, updated_at=datetime.now(UTC))
                .on_conflict_do_nothing(index_elements=["key"])
            )
            stored = (
                await conn.execute(
                    select(runtime_settings.c.value).where(runtime_settings.c.key == PEPPER_KEY)
                )
            ).scalar_one()
        self._pepper = stored.encode()

    def hash(self, secret: str) -> str:
        if self._pepper is None:
            raise RuntimeError("KeyStore.start() has not run")
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    async def version(self) -> int:
        value = await self._store.get_setting(VERSION_KEY)
        return int(value) if value is not None else 0

    async def all(self) -> list[ApiKeyRow]:
        async with self._store.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
        return [_row(r) for r in rows]

    async def create(self, row: ApiKeyRow) -> None:
        async with self._store.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(_values(row)))
        await self._bump()

    async def replace(self, row: ApiKeyRow) -> None:
        async with self._store.engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == row.id).values(_values(row)))
        await self._bump()

    async def touch(self, used: Iterable[tuple[str, datetime]]) -> None:
        """Record when keys were last used (batched by the caller: not a write per request)."""
        async with self._store.engine.begin() as conn:
            for key_id, at in used:
                await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))

    async def _bump(self) -> None:
        await self._store.set_setting(VERSION_KEY, str(await self.version() + 1))


def _values(row: ApiKeyRow) -> dict[str, Any]:
    values = asdict(row)
    values["scopes"] = orjson.dumps(row.scopes).decode()
    values["models"] = None if row.models is None else orjson.dumps(row.models).decode()
    return values


def _row(row: Row[Any]) -> ApiKeyRow:
    data = dict(row._mapping)
    data["scopes"] = orjson.loads(data["scopes"])
    data["models"] = None if data["models"] is None else orjson.loads(data["models"])
    for field in ("previous_valid_until", "expires_at", "created_at", "revoked_at", "last_used_at"):
        if data[field] is not None and data[field].tzinfo is None:
            data[field] = data[field].replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return ApiKeyRow(**data)
