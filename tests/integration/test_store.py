"""The store on real databases: a SQLite file, and PostgreSQL when TOKENHUB_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.databases import BACKENDS, open_store, write_lock_held
from tokenhub.store import RequestLog, RequestLogWriter, SQLStore


def row(n: int, *, request_id: str = "req", at: datetime | None = None) -> RequestLog:
    return RequestLog(
        id=str(uuid.uuid4()),
        request_id=f"{request_id}-{n}",
        created_at=at or datetime.now(UTC) + timedelta(milliseconds=n),
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


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLStore]:
    async with open_store(request.param, tmp_path) as store:
        yield store


async def test_rows_round_trip_newest_first(store: SQLStore) -> None:
    rows = [row(i) for i in range(3)]
    await store.write_request_logs(rows)
    stored = await store.request_logs(limit=10)
    assert [r.request_id for r in stored] == ["req-2", "req-1", "req-0"]
    assert stored[0].cost_usd == pytest.approx(0.002) and stored[0].output_tokens == 4
    assert stored[0].created_at.tzinfo is not None or store.url.get_backend_name() == "sqlite"


async def test_writing_the_same_row_twice_stores_it_once(store: SQLStore) -> None:
    """A retried write (a Temporal activity retried after a lost ack) must not log a request twice."""
    one = row(1)
    await store.write_request_logs([one])
    await store.write_request_logs([one, row(2)])
    assert sorted(r.request_id for r in await store.request_logs()) == ["req-1", "req-2"]


async def test_values_survive_the_batch_encoding_exactly(store: SQLStore) -> None:
    """SQLite receives a batch as the bound values of multi-row statements: quotes, non-ASCII text, NULLs,
    booleans and exact times must come back as they went in."""
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    tricky = dataclasses.replace(
        row(1, at=at),
        model='gpt-"4o"\né漢',
        reason="it's; DROP TABLE request_logs; --",
        tokens_estimated=True,
        cost_usd=1e-9,
    )
    await store.write_request_logs([tricky])
    (stored,) = await store.request_logs()
    assert stored.model == tricky.model and stored.reason == tricky.reason
    assert stored.tokens_estimated is True and stored.ttft_ms is None
    assert stored.cost_usd == pytest.approx(1e-9) and stored.input_tokens == 1
    assert stored.created_at.replace(tzinfo=UTC) == at


async def test_ping(store: SQLStore) -> None:
    await store.ping()


async def test_writer_batches_and_flushes_everything_on_close(store: SQLStore) -> None:
    writer = RequestLogWriter(store, flush_interval_s=60.0, max_batch=7)
    await writer.start()
    for i in range(20):
        await writer.write(row(i))
    assert await store.request_logs() == []  # nothing written on the request path
    await writer.aclose()
    assert len(await store.request_logs(limit=100)) == 20


async def test_a_full_writer_makes_the_request_wait_for_room_and_loses_nothing(store: SQLStore) -> None:
    writer = RequestLogWriter(store, flush_interval_s=60.0, max_batch=2, max_queue=3)
    await writer.start()
    for i in range(3):
        await writer.write(row(i))
    waiting = asyncio.ensure_future(writer.write(row(3)))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the queue is full: the fourth row waits, it is not dropped
    await writer.flush()
    await asyncio.wait_for(waiting, 5)
    await writer.aclose()
    assert sorted(r.request_id for r in await store.request_logs(limit=10)) == [f"req-{i}" for i in range(4)]


class WatchedStore:
    """The real store, with a signal once a write is under way."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self.writing = asyncio.Event()

    async def write_request_logs(self, rows: Sequence[RequestLog]) -> None:
        self.writing.set()
        await self.store.write_request_logs(rows)

    async def ping(self) -> None:
        await self.store.ping()


async def test_writer_closed_while_writing_keeps_every_row(store: SQLStore) -> None:
    """Shutdown while a flush is under way: the write in flight finishes, the rest follow."""
    watched = WatchedStore(store)
    writer = RequestLogWriter(watched, flush_interval_s=0.001, max_batch=50)
    await writer.start()
    for i in range(2_000):
        await writer.write(row(i))
    await asyncio.wait_for(watched.writing.wait(), 10)
    await writer.aclose()
    assert len(await store.request_logs(limit=5_000)) == 2_000


class OutageStore:
    """Stands in for a database that is down for its first two writes: a real outage cannot be
    produced on demand here without stopping the machine's shared PostgreSQL server."""

    def __init__(self) -> None:
        self.failures_left = 2
        self.rows: list[RequestLog] = []

    async def write_request_logs(self, rows: Sequence[RequestLog]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("database unavailable")
        self.rows.extend(rows)

    async def ping(self) -> None:
        return None


async def test_writer_keeps_rows_through_a_database_outage() -> None:
    backing = OutageStore()
    writer = RequestLogWriter(backing, flush_interval_s=0.01)
    await writer.start()
    for i in range(5):
        await writer.write(row(i))
    for _ in range(200):
        if len(backing.rows) == 5:
            break
        await asyncio.sleep(0.01)
    await writer.aclose()
    assert sorted(r.request_id for r in backing.rows) == [f"req-{i}" for i in range(5)]


async def test_a_large_batch_is_stored_whole_and_once(store: SQLStore) -> None:
    """389 rows in one batch (SQLite: four trips to its thread, 15 statements of 25 rows and one of 14),
    written twice: stored whole, every value in its own row, and once."""
    rows = [row(i) for i in range(389)]
    await store.write_request_logs(rows)
    await store.write_request_logs(rows)
    stored = {r.id: r for r in await store.request_logs(limit=1000)}
    assert sorted(stored) == sorted(r.id for r in rows)
    for sent in rows:
        got = stored[sent.id]
        at = got.created_at.astimezone(UTC) if got.created_at.tzinfo else got.created_at.replace(tzinfo=UTC)
        assert dataclasses.replace(got, created_at=at) == sent


async def test_a_batch_written_while_another_connection_writes_waits_for_it_off_the_event_loop(
    tmp_path: Path,
) -> None:
    async with open_store("sqlite", tmp_path) as store:
        assert store.url.database is not None
        with write_lock_held(Path(store.url.database)):
            writing = asyncio.create_task(store.write_request_logs([row(i) for i in range(150)]))
            await asyncio.sleep(0.2)  # would stall for the whole busy timeout if the loop waited on the lock
            assert not writing.done()
        await asyncio.wait_for(writing, 10)
        assert len(await store.request_logs(limit=200)) == 150
