"""Rate limiters: the per-process one, and the shared one on SQLite and (when set) PostgreSQL.

Every test drives an injected clock; nothing sleeps and nothing depends on the real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.databases import BACKENDS, POSTGRES_URL, fresh_postgres_database
from tokenhub.config import to_async_db_url
from tokenhub.store import SQLStore
from tokenhub.store.ratelimit import (
    PRUNE_EVERY,
    MemoryRateLimiter,
    RateLimiter,
    SQLRateLimiter,
    rate_limiter,
)
from tokenhub.store.schema import rate_counters

T0 = 60.0 * 30_000_000  # the start of an epoch minute (2027-01-15 08:00 UTC)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/tokenhub.db"
    else:
        async with fresh_postgres_database() as url:
            yield url


@contextlib.asynccontextmanager
async def started_store(url: str) -> AsyncIterator[SQLStore]:
    store = SQLStore(to_async_db_url(url))
    try:
        await store.start()
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 15.0)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLStore]:
    async with database_url(request.param, tmp_path) as url, started_store(url) as store:
        yield store


@pytest.fixture(params=["memory", *(f"sql-{backend}" for backend in BACKENDS)])
async def limiter(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(clock)
        return
    backend = request.param.removeprefix("sql-")
    async with database_url(backend, tmp_path) as url, started_store(url) as store:
        yield SQLRateLimiter(store, clock)


def as_tuple(decision: object) -> tuple[object, ...]:
    """(allowed, limit, remaining, reset_s), to compare against ``pytest.approx`` for reset_s."""
    assert dataclasses.is_dataclass(decision) and not isinstance(decision, type)
    return dataclasses.astuple(decision)


async def count_rows(store: SQLStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(rate_counters))).scalar_one())


async def test_allows_up_to_the_limit_then_refuses_until_the_minute_ends(
    limiter: RateLimiter, clock: Clock
) -> None:
    decisions = [await limiter.hit("rpm:k1", 3) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    refused = await limiter.hit("rpm:k1", 3)
    assert as_tuple(refused) == (False, 3, 0, pytest.approx(45.0))
    clock.now = T0 + 59.5
    late = await limiter.hit("rpm:k1", 3)
    assert not late.allowed
    assert late.reset_s == pytest.approx(0.5)


async def test_a_new_minute_starts_fresh(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(3):
        await limiter.hit("rpm:k1", 3)
    clock.now = T0 + 60.0
    fresh = await limiter.hit("rpm:k1", 3)
    assert as_tuple(fresh) == (True, 3, 2, pytest.approx(60.0))


async def test_a_refused_hit_counts_nothing(limiter: RateLimiter) -> None:
    assert (await limiter.hit("tpm:k1", 10, amount=8)).allowed
    for _ in range(20):  # hammering a full bucket
        refused = await limiter.hit("tpm:k1", 10, amount=5)
        assert not refused.allowed
        assert refused.remaining == 2  # the count is still 8
    assert (await limiter.hit("tpm:k1", 10, amount=2)).allowed
    assert not (await limiter.hit("rpm:k2", 1, amount=2)).allowed  # more than the limit can ever fit
    assert (await limiter.peek("rpm:k2", 1)).remaining == 1


async def test_tokens_peeked_before_and_added_after_a_request(limiter: RateLimiter, clock: Clock) -> None:
    empty = await limiter.peek("tpm:k1", 1000)
    assert as_tuple(empty) == (True, 1000, 1000, pytest.approx(45.0))
    await limiter.add("tpm:k1", 900)
    assert as_tuple(await limiter.peek("tpm:k1", 1000)) == (True, 1000, 100, pytest.approx(45.0))
    await limiter.add("tpm:k1", 0)
    await limiter.add("tpm:k1", 250)  # a request may use more than was left: counted all the same
    over = await limiter.peek("tpm:k1", 1000)
    assert not over.allowed
    assert over.remaining == 0
    assert not (await limiter.hit("tpm:k1", 1000, amount=1)).allowed
    clock.now = T0 + 61.0
    assert as_tuple(await limiter.peek("tpm:k1", 1000)) == (True, 1000, 1000, pytest.approx(59.0))


async def test_peek_is_allowed_only_below_the_limit(limiter: RateLimiter) -> None:
    await limiter.add("tpm:k1", 99)
    assert (await limiter.peek("tpm:k1", 100)).allowed
    await limiter.add("tpm:k1", 1)
    assert not (await limiter.peek("tpm:k1", 100)).allowed


async def test_buckets_are_independent(limiter: RateLimiter) -> None:
    assert (await limiter.hit("rpm:k1", 1)).allowed
    assert not (await limiter.hit("rpm:k1", 1)).allowed
    assert (await limiter.hit("rpm:k2", 1)).allowed
    assert (await limiter.hit("auth:10.0.0.1", 1)).allowed
    assert (await limiter.peek("tpm:k1", 5)).remaining == 5


async def test_negative_amounts_are_rejected(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="negative"):
        await limiter.hit("tpm:k1", 10, amount=-1)
    with pytest.raises(ValueError, match="negative"):
        await limiter.add("tpm:k1", -5)


async def test_concurrent_hits_allow_exactly_the_limit(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.hit("rpm:k1", 10) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    assert all(d.remaining == 0 for d in decisions if not d.allowed)
    assert (await limiter.peek("rpm:k1", 1000)).remaining == 990  # exactly 10 counted


async def test_concurrent_token_hits_never_pass_the_limit(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.hit("tpm:k1", 100, amount=7) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 14  # 14 * 7 = 98 <= 100 < 15 * 7
    assert (await limiter.peek("tpm:k1", 100)).remaining == 2


@pytest.mark.parametrize("backend", BACKENDS)
async def test_two_replicas_share_the_limit(backend: str, tmp_path: Path, clock: Clock) -> None:
    """Two engines (two connection pools, as two replicas have) hitting one bucket at once."""
    async with (
        database_url(backend, tmp_path) as url,
        started_store(url) as one,
        started_store(url) as two,
    ):
        replicas = [SQLRateLimiter(one, clock), SQLRateLimiter(two, clock)]
        decisions = await asyncio.gather(*(replicas[i % 2].hit("rpm:shared", 10) for i in range(50)))
        assert sum(d.allowed for d in decisions) == 10
        assert (await replicas[0].peek("rpm:shared", 10)).remaining == 0
        assert (await replicas[1].peek("rpm:shared", 1000)).remaining == 990


async def test_long_bucket_names_fit_the_column(store: SQLStore, clock: Clock) -> None:
    limiter = SQLRateLimiter(store, clock)
    long_a, long_b = "auth:" + "a" * 300, "auth:" + "a" * 299 + "b"
    assert (await limiter.hit(long_a, 1)).allowed
    assert not (await limiter.hit(long_a, 1)).allowed
    assert (await limiter.hit(long_b, 1)).allowed
    async with store.engine.connect() as conn:
        keys = (await conn.execute(select(rate_counters.c.bucket))).scalars().all()
    assert len(keys) == 2
    assert all(len(key) <= 200 for key in keys)


async def test_expired_rows_are_pruned(store: SQLStore, clock: Clock) -> None:
    limiter = SQLRateLimiter(store, clock)
    for i in range(5):
        await limiter.hit(f"rpm:k{i}", 10)
    await limiter.add("tpm:k0", 500)
    clock.now = T0 + 60.0 + 30.0  # next minute: the old rows expired only 30 s ago, within the grace
    await limiter.hit("rpm:k0", 10)
    assert await limiter.prune() == 0
    clock.now = T0 + 120.0  # a full minute after the first window ended
    assert await limiter.prune() == 6
    async with store.engine.connect() as conn:
        kept = (await conn.execute(select(rate_counters.c.bucket))).scalars().all()
    assert kept == [f"rpm:k0:{int(T0) // 60 + 1}"]  # the second minute's row


async def test_pruning_happens_every_hundredth_hit_not_every_hit(store: SQLStore, clock: Clock) -> None:
    limiter = SQLRateLimiter(store, clock)
    for i in range(10):
        await limiter.hit(f"rpm:old{i}", 10)
    clock.now = T0 + 180.0
    for _ in range(PRUNE_EVERY - 11):
        await limiter.hit("rpm:new", 1000)
    assert await count_rows(store) == 11  # 99 hits: nothing pruned yet
    await limiter.hit("rpm:new", 1000)  # the 100th
    assert await count_rows(store) == 1


async def test_memory_limiter_drops_old_windows(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    for i in range(1000):
        await limiter.hit(f"auth:10.0.{i // 256}.{i % 256}", 5)
    assert len(limiter) == 1000
    clock.now = T0 + 60.0
    assert (await limiter.peek("auth:10.0.0.0", 5)).remaining == 5
    assert len(limiter) == 0
    await limiter.add("tpm:k1", 10)
    assert len(limiter) == 1


async def test_rate_limiter_is_shared_on_postgresql_and_per_process_on_sqlite(store: SQLStore) -> None:
    chosen = rate_limiter(store)
    if store.is_sqlite:
        assert isinstance(chosen, MemoryRateLimiter)
    else:
        assert POSTGRES_URL is not None
        assert isinstance(chosen, SQLRateLimiter)
