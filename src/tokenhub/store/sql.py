"""The SQL store: SQLite by default, PostgreSQL for many replicas (SQLAlchemy Core, async drivers)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from sqlalchemy import event, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tokenhub.store.migrations import migrate
from tokenhub.store.models import RequestLog
from tokenhub.store.schema import request_logs, runtime_settings
from tokenhub.store.sqlite_writes import SQLiteWrites


class Store(Protocol):
    async def write_request_logs(self, rows: Sequence[RequestLog]) -> None: ...

    async def ping(self) -> None: ...


class SettingsStore(Protocol):
    async def get_setting(self, key: str) -> str | None: ...

    async def set_setting(self, key: str, value: str) -> None: ...


POSTGRES_POOL_SIZE = 10
POSTGRES_TIMEOUT_S = 10.0  # for a connection from the pool, and then for the statement


class SQLStore:
    def __init__(self, url: str) -> None:
        """``url`` is an async SQLAlchemy URL (``sqlite+aiosqlite://…`` or ``postgresql+asyncpg://…``)."""
        self.url = make_url(url)
        self._is_sqlite = self.url.get_backend_name() == "sqlite"
        options: dict[str, Any] = {"pool_pre_ping": not self._is_sqlite}
        self._engine: AsyncEngine = create_async_engine(url, **options)
        if self._is_sqlite:
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        self._postgres: asyncpg.Pool | None = None
        database = self.url.database
        # The request path's own writes to a SQLite file (an in-memory database is the engine's alone).
        self.sqlite = (
            SQLiteWrites(database) if self._is_sqlite and database and database != ":memory:" else None
        )

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine, for the store's own query modules (stats)."""
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self._is_sqlite

    async def start(self) -> None:
        """Create the database file's folder and bring the schema up to date (``store.migrations``); on
        PostgreSQL, open the pool ``postgres_fetchval`` uses."""
        await self.migrate()
        if not self._is_sqlite and self._postgres is None:
            self._postgres = await asyncpg.create_pool(
                self.url.set(drivername="postgresql").render_as_string(hide_password=False),
                min_size=1,
                max_size=POSTGRES_POOL_SIZE,
                reset=_as_it_is,
            )

    async def migrate(self) -> list[int]:
        """Apply any migrations the database lacks; the versions applied."""
        if self._is_sqlite and self.url.database and self.url.database != ":memory:":
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        async with self._engine.connect() as conn:
            return await conn.run_sync(migrate)

    async def postgres_fetchval(self, statement: str, *args: Any) -> Any:
        """``statement`` on PostgreSQL in one round trip (autocommitted), on a pool of asyncpg connections of
        its own: through SQLAlchemy's pool, a transaction of one statement was six round trips (the pool's
        ping, BEGIN, the statement, COMMIT, the reset on return), each a wake-up of this process; with its
        ping alone, two. Nothing here changes a session's state, so a connection goes back as it is."""
        if self._postgres is None:
            raise RuntimeError("SQLStore.start() has not run")
        async with self._postgres.acquire(timeout=POSTGRES_TIMEOUT_S) as connection:
            return await connection.fetchval(statement, *args, timeout=POSTGRES_TIMEOUT_S)

    async def aclose(self) -> None:
        if self.sqlite is not None:
            await self.sqlite.aclose()
        if self._postgres is not None:
            await self._postgres.close()
        await self._engine.dispose()

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def write_request_logs(self, rows: Sequence[RequestLog]) -> None:
        """Insert rows; a row whose id is already stored is skipped (writes are idempotent).

        SQLite gets statements of ``SQLITE_ROWS_PER_INSERT`` rows as bound values, all of them in one
        executemany (and the rest in one statement): one trip to aiosqlite's thread a batch. A statement
        per row waited for the GIL after every row while requests kept the event loop busy (measured under
        load: 2.4 ms a row, and the queue grew without bound). Rows as one JSON parameter cost SQLite 11 us
        a row, a statement of 25 bound rows 5.4 (json_extract parses a row's JSON once per column); a
        statement per batch size grew the gateway's memory by ~70 MB (SQLite's cached statements, one of
        every size), so the sizes are at most 25. PostgreSQL gets asyncpg's pipelined executemany. Either
        way, no SQLAlchemy parameter handling per row: it cost more CPU than the insert itself.
        """
        if not rows:
            return
        if self.sqlite is not None:
            for start in range(0, len(rows), SQLITE_ROWS_PER_TRIP):
                part = rows[start : start + SQLITE_ROWS_PER_TRIP]
                await self.sqlite.execute_on_thread([_sqlite_insert_of(chunk) for chunk in _chunks(part)])
            return
        async with self._engine.begin() as conn:
            if not self._is_sqlite:
                await conn.exec_driver_sql(_POSTGRES_INSERT_LOG, [_log_values(row) for row in rows])
                return
            for statement, parameters in map(_sqlite_insert_of, _chunks(rows)):  # in memory (tests)
                await conn.exec_driver_sql(statement, parameters)

    async def get_setting(self, key: str) -> str | None:
        query = select(runtime_settings.c.value).where(runtime_settings.c.key == key)
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).scalar_one_or_none()

    async def set_setting(self, key: str, value: str) -> None:
        dialect = sqlite if self._is_sqlite else postgresql
        row = {"key": key, "value": value, "updated_at": datetime.now(UTC)}
        statement = dialect.insert(runtime_settings).values(row)
        statement = statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": value, "updated_at": row["updated_at"]}
        )
        async with self._engine.begin() as conn:
            await conn.execute(statement)

    async def request_logs(self, limit: int = 100) -> list[RequestLog]:
        """The newest ``limit`` rows, newest first."""
        query = select(request_logs).order_by(request_logs.c.created_at.desc()).limit(limit)
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            return [RequestLog(**row._mapping) for row in result]


async def _as_it_is(connection: asyncpg.Connection) -> None:
    """A connection's reset on its way back to the pool: none (``postgres_fetchval`` changes no state)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


_LOG_COLUMNS = tuple(column.name for column in request_logs.columns)
_COLUMN_LIST = ", ".join(_LOG_COLUMNS)
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, len(_LOG_COLUMNS) + 1))
# Only the table's own column names go into these, nothing from outside.
_POSTGRES_INSERT_LOG = (
    f"INSERT INTO request_logs ({_COLUMN_LIST}) VALUES ({_PLACEHOLDERS}) ON CONFLICT (id) DO NOTHING"  # noqa: S608
)
_log_values = attrgetter(*_LOG_COLUMNS)
_CREATED_AT = _LOG_COLUMNS.index("created_at")


SQLITE_ROWS_PER_INSERT = 25
SQLITE_ROWS_PER_TRIP = 100
_ROW_PLACEHOLDERS = f"({', '.join('?' * len(_LOG_COLUMNS))})"


@functools.cache
def _sqlite_insert(count: int) -> str:
    """The insert of ``count`` rows (1 to ``SQLITE_ROWS_PER_INSERT``), as bound values."""
    values = ", ".join([_ROW_PLACEHOLDERS] * count)
    # Only the table's own column names go into it, nothing from outside.
    return f"INSERT INTO request_logs ({_COLUMN_LIST}) VALUES {values} ON CONFLICT (id) DO NOTHING"  # noqa: S608


def _chunks(rows: Sequence[RequestLog]) -> list[Sequence[RequestLog]]:
    return [rows[at : at + SQLITE_ROWS_PER_INSERT] for at in range(0, len(rows), SQLITE_ROWS_PER_INSERT)]


def _sqlite_insert_of(rows: Sequence[RequestLog]) -> tuple[str, tuple[Any, ...]]:
    return _sqlite_insert(len(rows)), _sqlite_params(rows)


def _sqlite_params(rows: Sequence[RequestLog]) -> tuple[Any, ...]:
    """The rows' values, one after another. Stored as SQLAlchemy stores them on SQLite, so its reads (stats,
    logs) see the same values: times as "YYYY-MM-DD HH:MM:SS.ffffff" in UTC."""
    params: list[Any] = []
    for row in rows:
        values = list(_log_values(row))
        values[_CREATED_AT] = sqlite_time(row.created_at)
        params += values
    return tuple(params)


def sqlite_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(" ", "microseconds")[:26]
