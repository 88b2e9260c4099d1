"""The audit log of admin changes, and the relay that carries a worker process's events to the gateways."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select

from tokenhub.store.models import AuditEntry, RelayedEvent
from tokenhub.store.schema import audit_log, relayed_events
from tokenhub.store.sql import SQLStore


class AuditStore:
    def __init__(self, store: SQLStore) -> None:
        self._store = store

    async def record(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        values = {
            "at": datetime.now(UTC),
            "actor": actor,
            "action": action,
            "target": target,
            "detail": orjson.dumps(detail).decode(),
        }
        async with self._store.engine.begin() as conn:
            await conn.execute(audit_log.insert().values(values))

    async def page(self, *, limit: int, before_id: int | None) -> list[AuditEntry]:
        """Newest first; ``before_id`` continues a previous page."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(audit_log.c.id < before_id)
        async with self._store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [AuditEntry(**{**r._mapping, "detail": orjson.loads(r.detail)}) for r in rows]


class EventRelayStore:
    def __init__(self, store: SQLStore) -> None:
        self._store = store

    async def append(self, source: str, events: Sequence[tuple[datetime, str, dict[str, Any]]]) -> None:
        rows = [
            {"at": at, "source": source, "type": kind, "data": orjson.dumps(data).decode()}
            for at, kind, data in events
        ]
        if rows:
            async with self._store.engine.begin() as conn:
                await conn.execute(relayed_events.insert(), rows)

    async def after(self, last_id: int, *, limit: int = 500) -> list[RelayedEvent]:
        query = (
            select(relayed_events)
            .where(relayed_events.c.id > last_id)
            .order_by(relayed_events.c.id)
            .limit(limit)
        )
        async with self._store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [RelayedEvent(**{**r._mapping, "data": orjson.loads(r.data)}) for r in rows]

    async def last_id(self) -> int:
        query = select(relayed_events.c.id).order_by(relayed_events.c.id.desc()).limit(1)
        async with self._store.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one_or_none() or 0)

    async def prune(self, older_than: timedelta) -> None:
        cutoff = datetime.now(UTC) - older_than
        async with self._store.engine.begin() as conn:
            await conn.execute(delete(relayed_events).where(relayed_events.c.at < cutoff))
