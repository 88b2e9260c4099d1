"""Providers and models in the store, and the catalogue version every process watches to stay current."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Integer, Table, Text, cast, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Delete

from tokenhub.store.models import ModelRow, ProviderRow
from tokenhub.store.schema import models, providers, runtime_settings
from tokenhub.store.sql import SQLStore

VERSION_KEY = "catalog_version"


class CatalogStore:
    def __init__(self, store: SQLStore) -> None:
        self._store = store

    async def version(self) -> int:
        """The catalogue's version: it goes up with every change, so a process can tell it is stale."""
        value = await self._store.get_setting(VERSION_KEY)
        return int(value) if value is not None else 0

    async def load(self) -> tuple[list[ProviderRow], list[ModelRow], int]:
        """Every provider and model, and the version they make up, read in one transaction."""
        async with self._store.engine.connect() as conn:
            version = (
                await conn.execute(
                    select(runtime_settings.c.value).where(runtime_settings.c.key == VERSION_KEY)
                )
            ).scalar_one_or_none()
            provider_rows = (await conn.execute(select(providers).order_by(providers.c.id))).all()
            model_rows = (await conn.execute(select(models).order_by(models.c.id))).all()
        return (
            [_provider(dict(r._mapping)) for r in provider_rows],
            [ModelRow(**r._mapping) for r in model_rows],
            int(version) if version is not None else 0,
        )

    async def seed(self, provider_rows: Sequence[ProviderRow], model_rows: Sequence[ModelRow]) -> bool:
        """Store the config file's catalogue, once ever: False if the store already had a catalogue (several
        processes starting together agree on one winner)."""
        claim = self._insert(runtime_settings).values(
            key=VERSION_KEY, value="1", updated_at=datetime.now(UTC)
        )
        async with self._store.engine.begin() as conn:
            claimed = await conn.execute(claim.on_conflict_do_nothing(index_elements=["key"]))
            if claimed.rowcount != 1:
                return False
            if provider_rows:
                await conn.execute(providers.insert(), [_provider_values(p) for p in provider_rows])
            if model_rows:
                await conn.execute(models.insert(), [asdict(m) for m in model_rows])
        return True

    async def put_provider(self, row: ProviderRow) -> None:
        await self._upsert(providers, _provider_values(row))

    async def put_model(self, row: ModelRow) -> None:
        await self._upsert(models, asdict(row))

    async def delete_provider(self, provider_id: str) -> bool:
        return await self._delete(delete(providers).where(providers.c.id == provider_id))

    async def delete_model(self, model_id: str) -> bool:
        return await self._delete(delete(models).where(models.c.id == model_id))

    async def _upsert(self, table: Table, values: dict[str, Any]) -> None:
        statement = self._insert(table).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=["id"], set_={k: v for k, v in values.items() if k != "id"}
        )
        async with self._store.engine.begin() as conn:
            await conn.execute(statement)
            await _bump(conn)

    async def _delete(self, statement: Delete) -> bool:
        async with self._store.engine.begin() as conn:
            result = await conn.execute(statement)
            if result.rowcount:
                await _bump(conn)
            return bool(result.rowcount)

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        return sqlite.insert(table) if self._store.is_sqlite else postgresql.insert(table)


async def _bump(conn: AsyncConnection) -> None:
    """Advance the catalogue version in the same transaction as the change, so every watcher reloads."""
    value = runtime_settings.c.value
    await conn.execute(
        update(runtime_settings)
        .where(runtime_settings.c.key == VERSION_KEY)
        .values(value=cast(cast(value, Integer) + 1, Text), updated_at=datetime.now(UTC))
    )


def _provider(row: dict[str, Any]) -> ProviderRow:
    return ProviderRow(**{**row, "options": orjson.loads(row["options"])})


def _provider_values(row: ProviderRow) -> dict[str, Any]:
    return {**asdict(row), "options": orjson.dumps(row.options).decode()}
