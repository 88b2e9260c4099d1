"""Spend per API key and budget period: reserved atomically before a call, settled to the real cost after.

The reservation is one conditional UPDATE — ``spent + reserved + amount <= budget`` — so concurrent requests,
from one process or many sharing PostgreSQL, can never reserve past the budget together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tokenhub.store.schema import key_spend, request_logs
from tokenhub.store.sql import SQLStore


def period_start(kind: str | None, now: datetime | None = None) -> datetime | None:
    """When the budget period containing ``now`` began (None for ``total``)."""
    now = now or datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        return day
    if kind == "week":
        return day - timedelta(days=day.weekday())
    if kind == "total":
        return None
    return day.replace(day=1)


def period_of(kind: str | None, now: datetime | None = None) -> str:
    """The budget period a moment falls in: ``2026-11`` (month), ``2026-W47`` (week), ``2026-11-22`` (day),
    or ``total``."""
    now = now or datetime.now(UTC)
    if kind == "day":
        return now.strftime("%Y-%m-%d")
    if kind == "week":
        year, week, _ = now.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == "total":
        return "total"
    return now.strftime("%Y-%m")


class SpendStore:
    def __init__(self, store: SQLStore) -> None:
        self._store = store

    async def reserve(self, key_id: str, period: str, amount: float, budget: float) -> bool:
        """Reserve ``amount`` USD if the period's spend and reservations leave room within ``budget``."""
        now = datetime.now(UTC)
        insert = sqlite.insert if self._store.is_sqlite else postgresql.insert
        where = (key_spend.c.key_id == key_id) & (key_spend.c.period == period)
        async with self._store.engine.begin() as conn:
            await conn.execute(
                insert(key_spend)
                .values(key_id=key_id, period=period, spent_usd=0.0, reserved_usd=0.0, updated_at=now)
                .on_conflict_do_nothing(index_elements=["key_id", "period"])
            )
            reserved = await conn.execute(
                update(key_spend)
                .where(where & (key_spend.c.spent_usd + key_spend.c.reserved_usd + amount <= budget))
                .values(reserved_usd=key_spend.c.reserved_usd + amount, updated_at=now)
            )
            return bool(reserved.rowcount)

    async def settle(self, key_id: str, period: str, reserved: float, actual: float) -> None:
        """Release ``reserved`` and count ``actual`` (what the call really cost)."""
        where = (key_spend.c.key_id == key_id) & (key_spend.c.period == period)
        async with self._store.engine.begin() as conn:
            await conn.execute(
                update(key_spend)
                .where(where)
                .values(
                    reserved_usd=key_spend.c.reserved_usd - reserved,
                    spent_usd=key_spend.c.spent_usd + actual,
                    updated_at=datetime.now(UTC),
                )
            )

    async def logged_spend(self, key_id: str, since: datetime | None) -> float:
        """What the request logs say the key spent since ``since`` (every request, budget or not)."""
        query = select(func.coalesce(func.sum(request_logs.c.cost_usd), 0.0)).where(
            request_logs.c.api_key_id == key_id
        )
        if since is not None:
            # SQLite keeps timestamps as text without their zone: compare in naive UTC there.
            bound = since.astimezone(UTC).replace(tzinfo=None) if self._store.is_sqlite else since
            query = query.where(request_logs.c.created_at >= bound)
        async with self._store.engine.connect() as conn:
            return float((await conn.execute(query)).scalar_one())

    async def spent(self, key_id: str, period: str) -> tuple[float, float]:
        """(spent, reserved) in USD for the period."""
        query = select(key_spend.c.spent_usd, key_spend.c.reserved_usd).where(
            (key_spend.c.key_id == key_id) & (key_spend.c.period == period)
        )
        async with self._store.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return (float(row.spent_usd), float(row.reserved_usd)) if row else (0.0, 0.0)
