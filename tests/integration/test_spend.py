"""Budget spend on real databases: a period's reservations and spend are its own; the next starts fresh."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.databases import BACKENDS, open_store, write_lock_held
from tokenhub.store.spend import SpendStore


@pytest.fixture(params=BACKENDS)
async def spend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SpendStore]:
    async with open_store(request.param, tmp_path) as store:
        yield SpendStore(store)


async def test_a_spent_budget_refuses_until_the_next_period(spend: SpendStore) -> None:
    assert await spend.reserve("k1", "2026-11", 0.75, budget=1.0)
    await spend.settle("k1", "2026-11", reserved=0.75, actual=0.9)
    assert await spend.spent("k1", "2026-11") == pytest.approx((0.9, 0.0))
    assert not await spend.reserve("k1", "2026-11", 0.2, budget=1.0)  # 0.9 spent + 0.2 > 1.0
    assert await spend.reserve("k1", "2026-11", 0.1, budget=1.0)  # what is left can still be used
    # December owes nothing to November, and another key owes nothing to this one.
    assert await spend.reserve("k1", "2026-12", 1.0, budget=1.0)
    assert await spend.reserve("k2", "2026-11", 1.0, budget=1.0)
    assert await spend.spent("k1", "2026-12") == pytest.approx((0.0, 1.0))


async def test_a_reservation_counts_until_it_is_settled(spend: SpendStore) -> None:
    assert await spend.reserve("k1", "total", 0.6, budget=1.0)
    assert not await spend.reserve("k1", "total", 0.6, budget=1.0)  # held, though nothing is spent yet
    await spend.settle("k1", "total", reserved=0.6, actual=0.1)  # the call cost less than reserved
    assert await spend.reserve("k1", "total", 0.6, budget=1.0)


async def test_a_reservation_whose_caller_left_is_released(spend: SpendStore) -> None:
    """Callers cancelled at points 0.2 ms apart through a reservation, each on a key of its own: on
    PostgreSQL some while the statement is under way, which still reserves; nobody would settle that. Only
    what a caller got is held."""
    held = {}
    for step in range(20):
        key = f"k{step}"
        reserving = asyncio.create_task(spend.reserve(key, "total", 0.5, budget=1.0))
        await asyncio.sleep(step * 0.0002)
        reserving.cancel()
        try:
            held[key] = await reserving
        except asyncio.CancelledError:
            held[key] = False
        await asyncio.sleep(0.02)  # the pool's connection back before the next
    expected = {key: (0.0, 0.5 if got else 0.0) for key, got in held.items()}
    for _ in range(500):  # bounded: 10 s
        reserved = {key: await spend.spent(key, "total") for key in held}
        if reserved == expected:  # exact: 0.5 is exact in binary
            break
        await asyncio.sleep(0.02)
    assert reserved == expected


async def test_a_settlement_whose_caller_left_still_lands(spend: SpendStore) -> None:
    """A client that disconnects while its call is settled: the cost is still counted and the reservation
    released. Cancelled as soon as it has started: on PostgreSQL while its statement is under way."""
    assert await spend.reserve("k1", "total", 0.5, budget=1.0)
    settling = asyncio.create_task(spend.settle("k1", "total", reserved=0.5, actual=0.2))
    await asyncio.sleep(0)
    settling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await settling
    for _ in range(500):  # bounded: 10 s
        if await spend.spent("k1", "total") == pytest.approx((0.2, 0.0)):
            break
        await asyncio.sleep(0.02)
    assert await spend.spent("k1", "total") == pytest.approx((0.2, 0.0))


@pytest.fixture
async def sqlite_spend(tmp_path: Path) -> AsyncIterator[tuple[SpendStore, Path]]:
    """A spend store on a SQLite file, and the file, for a second connection to take its write lock."""
    async with open_store("sqlite", tmp_path) as store:
        assert store.url.database is not None
        yield SpendStore(store), Path(store.url.database)


async def test_a_reservation_waits_off_the_event_loop_while_another_connection_writes(
    sqlite_spend: tuple[SpendStore, Path],
) -> None:
    spend, path = sqlite_spend
    with write_lock_held(path):
        reserving = asyncio.create_task(spend.reserve("k1", "total", 0.5, budget=1.0))
        # Waiting on the event loop instead would have stalled this sleep for the whole busy timeout, then
        # failed the reservation ("database is locked").
        await asyncio.sleep(0.2)
        assert not reserving.done()
    assert await asyncio.wait_for(reserving, 10)
    assert await spend.spent("k1", "total") == pytest.approx((0.0, 0.5))


async def test_a_reservation_whose_caller_left_while_it_waited_is_released(
    sqlite_spend: tuple[SpendStore, Path],
) -> None:
    spend, path = sqlite_spend
    with write_lock_held(path):
        reserving = asyncio.create_task(spend.reserve("k1", "total", 0.5, budget=1.0))
        await asyncio.sleep(0.1)
        reserving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reserving
    # The reservation still went through once the lock was free (its period's row is there), and was
    # released after it. Bounded: 10 s.
    for _ in range(500):
        if reserved_in(path, "k1", "total") == 0.0:
            break
        await asyncio.sleep(0.02)
    assert await spend.reserve("k1", "total", 1.0, budget=1.0)  # all of the budget is there


async def test_a_settlement_whose_caller_left_while_it_waited_still_lands(
    sqlite_spend: tuple[SpendStore, Path],
) -> None:
    spend, path = sqlite_spend
    assert await spend.reserve("k1", "total", 0.5, budget=1.0)
    with write_lock_held(path):
        settling = asyncio.create_task(spend.settle("k1", "total", reserved=0.5, actual=0.2))
        await asyncio.sleep(0.1)
        settling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await settling
        assert reserved_in(path, "k1", "total") == 0.5  # not yet: the lock is still held
    for _ in range(500):  # bounded: 10 s
        if reserved_in(path, "k1", "total") == 0.0:
            break
        await asyncio.sleep(0.02)
    assert await spend.spent("k1", "total") == pytest.approx((0.2, 0.0))


def reserved_in(path: Path, key_id: str, period: str) -> float | None:
    """The period's reserved USD as the file has it; None before its row exists."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT reserved_usd FROM key_spend WHERE key_id = ? AND period = ?", (key_id, period)
        ).fetchone()
    return None if row is None else float(row[0])
