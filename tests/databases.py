"""Test databases: PostgreSQL when ``TOKENHUB_TEST_POSTGRES_URL`` is set (CI sets it where one runs)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg

from tokenhub.config import to_async_db_url
from tokenhub.store import SQLStore

POSTGRES_URL = os.environ.get("TOKENHUB_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new database on the test server, dropped afterwards; yields its plain ``postgresql://`` URL."""
    assert POSTGRES_URL is not None
    name = f"tokenhub_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{POSTGRES_URL.rpartition('/')[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database URL on ``backend``: a new SQLite file under ``tmp_path`` (in a directory the store must
    create), or a fresh PostgreSQL database dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/nested/{uuid.uuid4().hex[:8]}.db"
    else:
        async with fresh_postgres_database() as url:
            yield url


@contextlib.asynccontextmanager
async def started_store(url: str) -> AsyncIterator[SQLStore]:
    """A store on ``url``, started (the schema brought up to date), closed afterwards."""
    store = SQLStore(to_async_db_url(url))
    try:
        await store.start()
        yield store
    finally:
        await store.aclose()


@contextlib.asynccontextmanager
async def open_store(backend: str, tmp_path: Path) -> AsyncIterator[SQLStore]:
    """A started store on a new database on ``backend`` (see ``database_url``)."""
    async with database_url(backend, tmp_path) as url, started_store(url) as store:
        yield store


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding a SQLite file's write lock (as another process writing does)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
