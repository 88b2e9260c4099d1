"""Schema migrations on real databases: what they build is what the code queries, and re-running, upgrading
an older database and racing migrators are all safe. SQLite file, and PostgreSQL when
TOKENHUB_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pprint
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.databases import BACKENDS, fresh_postgres_database
from tokenhub.config import to_async_db_url
from tokenhub.store import RequestLog, SQLStore
from tokenhub.store.migrations import MIGRATIONS, current_version, migrate, schema_migrations
from tokenhub.store.schema import api_keys, metadata

ALL_VERSIONS = [m.version for m in MIGRATIONS]
CLI_TIMEOUT_S = 60
T = TypeVar("T")


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A plain (``sqlite:///`` or ``postgresql://``) URL of an empty database, as an operator writes it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tokenhub.db"
    else:
        async with fresh_postgres_database() as url:
            yield url


async def on_database(url: str, work: Callable[[Connection], T]) -> T:
    """Run ``work`` on a sync connection of a short-lived engine, disposed afterwards."""
    engine = create_async_engine(to_async_db_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


def _schema_diff(conn: Connection) -> list[Any]:
    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        # schema_migrations is the runner's own bookkeeping (migrations.py), deliberately absent from
        # schema.metadata, which holds only the tables the queries use; the tests below check its rows.
        return not (type_ == "table" and name == schema_migrations.name)

    context = MigrationContext.configure(
        conn,
        opts={
            "include_name": include_name,
            "compare_type": True,
            # Neither schema.py nor any migration declares a server default, so any reflected default is
            # drift worth seeing; PostgreSQL's SERIAL ``nextval(...)`` on the autoincrement keys is
            # recognised by Alembic and reports nothing.
            "compare_server_default": True,
        },
    )
    return list(compare_metadata(context, metadata))


async def schema_diff(url: str) -> list[Any]:
    """Alembic autogenerate's differences between the database and ``schema.metadata`` (empty = same)."""
    return await on_database(url, _schema_diff)


def _recorded_versions(conn: Connection) -> list[tuple[int, datetime]]:
    query = select(schema_migrations.c.version, schema_migrations.c.applied_at)
    return [(r.version, r.applied_at) for r in conn.execute(query.order_by(schema_migrations.c.version))]


async def recorded_versions(url: str) -> list[int]:
    return [version for version, _ in await on_database(url, _recorded_versions)]


def row(n: int) -> RequestLog:
    return RequestLog(
        id=str(uuid.uuid4()),
        request_id=f"req-{n}",
        created_at=datetime.now(UTC),
        model="m",
        provider="p",
        mode="normal",
        path="direct",
        stream=False,
        status=200,
        reason="routed-normal",
        attempts=1,
        input_tokens=n,
        output_tokens=2 * n,
        tokens_estimated=False,
        cost_usd=0.001 * n,
        latency_ms=12.5,
        ttft_ms=None,
    )


def key_row(name: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "name": name,
        "prefix": "th-abc",
        "hash": uuid.uuid4().hex + uuid.uuid4().hex,
        "scopes": '["chat"]',
        "created_at": datetime.now(UTC),
    }


@dataclass
class CliRun:
    code: int
    events: list[dict[str, Any]]
    stderr: str

    def event(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]


async def tokenhub_migrate(db_url: str, cwd: Path) -> CliRun:
    """``tokenhub migrate`` as an operator runs it: a real process, told the database by TOKENHUB_DB_URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")}
    env.update(TOKENHUB_DB_URL=db_url, TOKENHUB_LOG_FORMAT="json", TOKENHUB_LOG_LEVEL="info")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokenhub",
        "migrate",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = err.decode()
    events = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                events.append(parsed)
    assert process.returncode is not None
    return CliRun(process.returncode, events, stderr)


async def test_migrating_an_empty_database_builds_exactly_the_schema_the_code_queries(
    database_url: str,
) -> None:
    store = SQLStore(to_async_db_url(database_url))
    try:
        assert await store.migrate() == ALL_VERSIONS
    finally:
        await store.aclose()
    diff = await schema_diff(database_url)
    assert diff == [], f"migrations and schema.py disagree:\n{pprint.pformat(diff)}"
    assert await recorded_versions(database_url) == ALL_VERSIONS


async def test_tokenhub_migrate_twice_applies_nothing_the_second_time_and_keeps_data(
    database_url: str, tmp_path: Path
) -> None:
    first = await tokenhub_migrate(database_url, tmp_path)
    assert first.code == 0, first.stderr
    assert [e["applied"] for e in first.event("migrated")] == [ALL_VERSIONS], first.stderr
    assert [e["version"] for e in first.event("schema_migrated")] == ALL_VERSIONS
    assert "Traceback" not in first.stderr
    applied_at = await on_database(database_url, _recorded_versions)

    # Data written by a running gateway between the two runs.
    key = key_row("ci-bot")

    def write(conn: Connection) -> None:
        with conn.begin():
            conn.execute(insert(api_keys).values(key))

    await on_database(database_url, write)
    store = SQLStore(to_async_db_url(database_url))
    try:
        await store.write_request_logs([row(1)])
    finally:
        await store.aclose()

    second = await tokenhub_migrate(database_url, tmp_path)
    assert second.code == 0, second.stderr
    assert [e["applied"] for e in second.event("migrated")] == [[]], second.stderr
    assert second.event("schema_migrated") == []
    assert "Traceback" not in second.stderr

    # Each version recorded once, when the first run applied it.
    assert await on_database(database_url, _recorded_versions) == applied_at
    assert [version for version, _ in applied_at] == ALL_VERSIONS

    def read_key(conn: Connection) -> list[tuple[str, str]]:
        return [(r.id, r.name) for r in conn.execute(select(api_keys.c.id, api_keys.c.name))]

    assert await on_database(database_url, read_key) == [(key["id"], "ci-bot")]
    store = SQLStore(to_async_db_url(database_url))
    try:
        assert [r.request_id for r in await store.request_logs()] == ["req-1"]
    finally:
        await store.aclose()
    diff = await schema_diff(database_url)
    assert diff == [], f"migrations and schema.py disagree:\n{pprint.pformat(diff)}"


async def test_a_version_1_database_is_brought_up_to_date_at_start_with_its_data(database_url: str) -> None:
    old = MIGRATIONS[:1]
    assert [m.version for m in old] == [1]
    assert await on_database(database_url, lambda conn: migrate(conn, old)) == [1]
    assert await on_database(database_url, current_version) == 1
    # The comparison sees what version 1 lacks (so an empty diff below means something).
    added = {d[1].name for d in await schema_diff(database_url) if d[0] == "add_table"}
    assert {"api_keys", "key_spend", "rate_counters"} <= added

    logs = [row(i) for i in range(3)]
    store = SQLStore(to_async_db_url(database_url))
    try:
        await store.write_request_logs(logs)
        await store.set_setting("temporal_enabled", "true")
    finally:
        await store.aclose()

    store = SQLStore(to_async_db_url(database_url))
    try:
        await store.start()
        assert sorted(r.request_id for r in await store.request_logs()) == ["req-0", "req-1", "req-2"]
        assert {r.id for r in await store.request_logs()} == {r.id for r in logs}
        assert await store.get_setting("temporal_enabled") == "true"
    finally:
        await store.aclose()

    assert await on_database(database_url, current_version) == MIGRATIONS[-1].version
    assert await recorded_versions(database_url) == ALL_VERSIONS
    diff = await schema_diff(database_url)
    assert diff == [], f"migrations and schema.py disagree:\n{pprint.pformat(diff)}"


# PostgreSQL alone serialises migrators (advisory lock); the param exists only when a server is configured.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
async def test_two_gateways_starting_at_once_on_postgresql_migrate_once(backend: str) -> None:
    assert backend == "postgresql"
    async with fresh_postgres_database() as url, contextlib.AsyncExitStack() as stack:
        stores = [SQLStore(to_async_db_url(url)) for _ in range(2)]
        for store in stores:
            stack.push_async_callback(store.aclose)
            await store.ping()  # connected already, so both reach the migrations at the same moment
        results = await asyncio.gather(*(store.start() for store in stores), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert await recorded_versions(url) == ALL_VERSIONS
        diff = await schema_diff(url)
        assert diff == [], f"migrations and schema.py disagree:\n{pprint.pformat(diff)}"
        await stack.aclose()  # release the connections before the database is dropped
