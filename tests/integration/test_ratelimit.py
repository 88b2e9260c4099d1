"""Rate limiters (GCRA): the per-process one, and the shared one on SQLite and (when set) PostgreSQL.

Every test drives an injected clock; nothing sleeps and nothing depends on the real time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.databases import BACKENDS, POSTGRES_URL, database_url, open_store, started_store
from tokenhub.store import SQLStore
from tokenhub.store.ratelimit import (
    PRUNE_EVERY,
    SLACK_S,
    MemoryRateLimiter,
    RateDecision,
    RateLimiter,
    SQLRateLimiter,
    rate_limiter,
)
from tokenhub.store.schema import rate_counters

T0 = 60.0 * 30_000_000  # the start of an epoch minute (2027-01-15 08:00 UTC)
START = T0 + 15.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLStore]:
    async with open_store(request.param, tmp_path) as store:
        yield store


@pytest.fixture(params=["memory", *(f"sql-{backend}" for backend in BACKENDS)])
async def limiter(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(clock)
        return
    backend = request.param.removeprefix("sql-")
    async with open_store(backend, tmp_path) as store:
        yield SQLRateLimiter(store, clock)


def allowed(remaining: int, reset_s: float, limit: int) -> tuple[object, ...]:
    return (True, limit, remaining, pytest.approx(reset_s), 0.0)


def refused(remaining: int, reset_s: float, retry_after_s: float, limit: int) -> tuple[object, ...]:
    return (False, limit, remaining, pytest.approx(reset_s), pytest.approx(retry_after_s))


def as_tuple(decision: RateDecision) -> tuple[object, ...]:
    """(allowed, limit, remaining, reset_s, retry_after_s), to compare against ``allowed``/``refused``."""
    return dataclasses.astuple(decision)


async def count_rows(store: SQLStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(rate_counters))).scalar_one())


async def buckets(store: SQLStore) -> list[str]:
    async with store.engine.connect() as conn:
        return sorted((await conn.execute(select(rate_counters.c.bucket))).scalars().all())


async def test_a_burst_of_the_limit_is_allowed_then_refused(limiter: RateLimiter) -> None:
    decisions = [as_tuple(await limiter.hit("rpm:k1", 3)) for _ in range(3)]
    assert decisions == [allowed(2, 20.0, 3), allowed(1, 40.0, 3), allowed(0, 60.0, 3)]
    assert as_tuple(await limiter.hit("rpm:k1", 3)) == refused(0, 60.0, 20.0, 3)


@pytest.mark.parametrize("limit", [7, 9, 25, 600])
async def test_a_burst_of_exactly_the_limit_fits_whatever_the_interval(
    limiter: RateLimiter, limit: int
) -> None:
    """60 / limit is no exact binary fraction: the float rounding of the tats must not cost the last unit."""
    remaining = [(await limiter.hit("rpm:k1", limit)).remaining for _ in range(limit)]
    assert remaining == list(range(limit - 1, -1, -1))
    last = await limiter.hit("rpm:k1", limit)
    # Each step rounds by up to ~0.1 µs (600 steps: ~60 µs); times are promised to within SLACK_S.
    times = pytest.approx(60.0, abs=SLACK_S), pytest.approx(60.0 / limit, abs=SLACK_S)
    assert as_tuple(last) == (False, limit, 0, *times)


async def test_one_unit_refills_every_interval(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(3):
        await limiter.hit("rpm:k1", 3)
    clock.now = START + 19.5  # not yet: a unit takes 20 s
    assert as_tuple(await limiter.hit("rpm:k1", 3)) == refused(0, 40.5, 0.5, 3)
    clock.now = START + 20.0
    assert as_tuple(await limiter.hit("rpm:k1", 3)) == allowed(0, 60.0, 3)
    assert as_tuple(await limiter.hit("rpm:k1", 3)) == refused(0, 60.0, 20.0, 3)
    clock.now = START + 40.0  # the Retry-After given, to the second
    assert as_tuple(await limiter.hit("rpm:k1", 3)) == allowed(0, 60.0, 3)
    clock.now = START + 130.0  # full again since START + 100, and counting from now
    assert as_tuple(await limiter.peek("rpm:k1", 3)) == allowed(3, 0.0, 3)
    assert as_tuple(await limiter.hit("rpm:k1", 3)) == allowed(2, 20.0, 3)


async def test_an_idle_bucket_counts_from_now(limiter: RateLimiter, clock: Clock) -> None:
    assert as_tuple(await limiter.hit("rpm:k1", 60)) == allowed(59, 1.0, 60)
    clock.now = START + 5.0  # idle for 4 s: that time is not banked
    assert as_tuple(await limiter.hit("rpm:k1", 60)) == allowed(59, 1.0, 60)


async def test_no_second_burst_across_a_minute_boundary(limiter: RateLimiter, clock: Clock) -> None:
    clock.now = T0 + 59.0
    assert all([(await limiter.hit("rpm:k1", 3)).allowed for _ in range(3)])
    clock.now = T0 + 60.0  # a new epoch minute, which fixed windows would have started afresh
    assert as_tuple(await limiter.hit("rpm:k1", 3)) == refused(0, 59.0, 19.0, 3)


async def test_a_refused_hit_takes_nothing(limiter: RateLimiter, clock: Clock) -> None:
    assert as_tuple(await limiter.hit("tpm:k1", 10, amount=8)) == allowed(2, 48.0, 10)
    for _ in range(20):  # hammering a full bucket does not push its refill further out
        assert as_tuple(await limiter.hit("tpm:k1", 10, amount=5)) == refused(2, 48.0, 18.0, 10)
    clock.now = START + 18.0
    assert as_tuple(await limiter.hit("tpm:k1", 10, amount=5)) == allowed(0, 60.0, 10)


async def test_more_than_the_limit_never_fits_and_takes_nothing(limiter: RateLimiter) -> None:
    over = await limiter.hit("rpm:k1", 1, amount=2)
    assert (over.allowed, over.remaining, over.reset_s) == (False, 1, 0.0)
    assert as_tuple(await limiter.peek("rpm:k1", 1)) == allowed(1, 0.0, 1)
    # One unit past a limit whose interval (0.6 ms) is below SLACK_S: the time would fit, the count does not.
    assert not (await limiter.hit("tpm:k1", 100_000, amount=100_001)).allowed
    assert (await limiter.peek("tpm:k1", 100_000)).remaining == 100_000


async def test_tokens_peeked_before_and_added_after_a_request(limiter: RateLimiter, clock: Clock) -> None:
    assert as_tuple(await limiter.peek("tpm:k1", 1000)) == allowed(1000, 0.0, 1000)  # 60 ms a token
    await limiter.add("tpm:k1", 1000, 100)
    clock.now = START + 10.0  # those 100 tokens refilled 4 s ago: an idle bucket counts from now
    await limiter.add("tpm:k1", 1000, 900)
    assert as_tuple(await limiter.peek("tpm:k1", 1000)) == allowed(100, 54.0, 1000)
    await limiter.add("tpm:k1", 1000, 0)
    await limiter.add("tpm:k1", 1000, 250)  # a request may use more than was left: taken all the same
    assert as_tuple(await limiter.peek("tpm:k1", 1000)) == refused(0, 69.0, 9.06, 1000)
    assert not (await limiter.hit("tpm:k1", 1000)).allowed
    clock.now = START + 10.0 + 9.06
    assert as_tuple(await limiter.peek("tpm:k1", 1000)) == allowed(1, 59.94, 1000)
    clock.now = START + 10.0 + 69.0
    assert as_tuple(await limiter.peek("tpm:k1", 1000)) == allowed(1000, 0.0, 1000)


async def test_peek_is_allowed_only_with_room_for_one_unit(limiter: RateLimiter) -> None:
    await limiter.add("tpm:k1", 100, 99)
    assert as_tuple(await limiter.peek("tpm:k1", 100)) == allowed(1, 59.4, 100)
    await limiter.add("tpm:k1", 100, 1)
    assert as_tuple(await limiter.peek("tpm:k1", 100)) == refused(0, 60.0, 0.6, 100)


async def test_buckets_are_independent(limiter: RateLimiter) -> None:
    assert (await limiter.hit("rpm:k1", 1)).allowed
    assert not (await limiter.hit("rpm:k1", 1)).allowed
    assert (await limiter.hit("rpm:k2", 1)).allowed
    assert (await limiter.hit("auth:10.0.0.1", 1)).allowed
    assert (await limiter.peek("tpm:k1", 5)).remaining == 5


async def test_negative_amounts_and_limits_below_one_are_rejected(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="negative"):
        await limiter.hit("tpm:k1", 10, amount=-1)
    with pytest.raises(ValueError, match="negative"):
        await limiter.add("tpm:k1", 10, -5)
    with pytest.raises(ValueError, match="positive"):
        await limiter.hit("rpm:k1", 0)
    with pytest.raises(ValueError, match="positive"):
        await limiter.peek("rpm:k1", 0)
    with pytest.raises(ValueError, match="positive"):
        await limiter.add("tpm:k1", 0, 0)


async def test_concurrent_hits_allow_exactly_the_limit(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.hit("rpm:k1", 10) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    assert {as_tuple(d) for d in decisions if not d.allowed} == {(False, 10, 0, 60.0, 6.0)}
    assert (await limiter.peek("rpm:k1", 10)).reset_s == pytest.approx(60.0)  # exactly 10 taken


async def test_concurrent_token_hits_never_pass_the_limit(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.hit("tpm:k1", 100, amount=7) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 14  # 14 * 7 = 98 <= 100 < 15 * 7
    assert as_tuple(await limiter.peek("tpm:k1", 100)) == allowed(2, 58.8, 100)


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
        assert all(d.retry_after_s == pytest.approx(6.0) for d in decisions if not d.allowed)
        for replica in replicas:
            assert as_tuple(await replica.peek("rpm:shared", 10)) == refused(0, 60.0, 6.0, 10)


async def test_refused_hits_write_no_row(store: SQLStore, clock: Clock) -> None:
    limiter = SQLRateLimiter(store, clock)
    assert not (await limiter.hit("rpm:k1", 1, amount=2)).allowed
    assert await count_rows(store) == 0


async def test_long_bucket_names_fit_the_column(store: SQLStore, clock: Clock) -> None:
    limiter = SQLRateLimiter(store, clock)
    long_a, long_b, widest = "auth:" + "a" * 300, "auth:" + "a" * 299 + "b", "auth:" + "c" * 195
    assert (await limiter.hit(long_a, 1)).allowed
    assert not (await limiter.hit(long_a, 1)).allowed
    assert (await limiter.hit(long_b, 1)).allowed
    assert (await limiter.hit(widest, 1)).allowed
    keys = await buckets(store)
    assert len(keys) == 3
    assert widest in keys  # 200 characters fit as they are
    assert all(len(key) <= 200 for key in keys)


async def test_prune_deletes_only_rows_whose_tat_passed_a_grace_ago(store: SQLStore, clock: Clock) -> None:
    limiter = SQLRateLimiter(store, clock)
    for i in range(5):
        await limiter.hit(f"rpm:k{i}", 10)  # rows good until START + 60 at the latest
    await limiter.add("tpm:k0", 10, 25)
    await limiter.add("tpm:k0", 10, 25)  # 50 units of 6 s: the tat is START + 300
    clock.now = START + 90.0  # the hits' rows expired only 30 s ago, within the grace
    await limiter.hit("rpm:k0", 10)
    assert await limiter.prune() == 0
    clock.now = START + 121.0
    assert await limiter.prune() == 4
    assert await buckets(store) == ["rpm:k0", "tpm:k0"]
    clock.now = START + 359.0  # the add's row is kept until a grace after its tat
    assert await limiter.prune() == 1
    assert await buckets(store) == ["tpm:k0"]
    clock.now = START + 360.0
    assert await limiter.prune() == 1
    assert await count_rows(store) == 0


async def test_pruning_happens_every_hundredth_hit_not_every_hit(store: SQLStore, clock: Clock) -> None:
    limiter = SQLRateLimiter(store, clock)
    for i in range(10):
        await limiter.hit(f"rpm:old{i}", 10)
    clock.now = START + 180.0
    for _ in range(PRUNE_EVERY - 11):
        await limiter.hit("rpm:new", 1000)
    assert await count_rows(store) == 11  # 99 hits: nothing pruned yet
    await limiter.hit("rpm:new", 1000)  # the 100th
    assert await count_rows(store) == 1


async def test_memory_limiter_drops_idle_buckets_once_a_minute(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    for i in range(1000):
        await limiter.hit(f"auth:10.0.{i // 256}.{i % 256}", 5)  # each tat is START + 12
    await limiter.add("tpm:busy", 5, 50)  # tat START + 600
    assert len(limiter) == 1001
    clock.now = START + 30.0  # idle now, but no sweep on every call
    assert (await limiter.peek("auth:10.0.0.0", 5)).remaining == 5
    assert len(limiter) == 1001
    clock.now = START + 60.0
    await limiter.peek("auth:10.0.0.0", 5)
    assert len(limiter) == 1
    assert (await limiter.peek("tpm:busy", 5)).reset_s == pytest.approx(540.0)


async def test_rate_limiter_is_shared_on_postgresql_and_per_process_on_sqlite(store: SQLStore) -> None:
    chosen = rate_limiter(store)
    if store.is_sqlite:
        assert isinstance(chosen, MemoryRateLimiter)
    else:
        assert POSTGRES_URL is not None
        assert isinstance(chosen, SQLRateLimiter)
