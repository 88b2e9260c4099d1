"""Test databases: PostgreSQL when ``TOKENHUB_TEST_POSTGRES_URL`` is set (CI sets it where one runs)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
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
async def open_store(backend: str, tmp_path: Path) -> AsyncIterator[SQLStore]:
    """A started store on ``backend`` ("sqlite": a new file under ``tmp_path``; "postgresql": a fresh
    database), closed (and the database dropped) afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path}/nested/{backend}-{uuid.uuid4().hex[:8]}.db"
        else:
            url = await stack.enter_async_context(fresh_postgres_database())
        store = SQLStore(to_async_db_url(url))
        await store.start()
        stack.push_async_callback(store.aclose)
        yield store
