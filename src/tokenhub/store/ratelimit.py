"""Rate limits: fixed one-minute windows counting requests, tokens or failed logins per bucket.

This module owns the counting only; the caller chooses the buckets (``rpm:<key id>``, ``tpm:<key id>``,
``auth:<client ip>``, …) and the limits, and turns a ``RateDecision`` into a 429 and its headers.

Two implementations of ``RateLimiter``:

* ``MemoryRateLimiter`` counts in the process. Each replica (each worker process) has its own counters, so
  N processes together let through up to N times the limit. ``rate_limiter()`` picks it for SQLite, which
  serves a single process: a SQLite deployment's limits are per process.
* ``SQLRateLimiter`` counts in the ``rate_counters`` table, so every replica sharing the PostgreSQL database
  shares the limits. A hit is one conditional upsert, atomic across processes. Windows come from each
  process's own clock, so replicas must keep their clocks in sync (NTP): a replica whose clock is off by a
  few seconds counts those seconds in a neighbouring window.

Windows are aligned to the epoch minute (``floor(now / 60)``), identical on every replica, so a bucket's
counter for a window is one row (``"<bucket>:<window>"``) that expires at the window's end.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tokenhub.store.schema import rate_counters
from tokenhub.store.sql import SQLStore

WINDOW_S = 60
# Expired rows are deleted after every this many hits of one limiter, not on every request: the DELETE is
# cheap (indexed on expires_at) but needless on the hot path.
PRUNE_EVERY = 100
# A row is deleted only a window after it expired, so a replica whose clock lags a little behind can still
# find (and keep counting) the previous window's row instead of starting it afresh.
PRUNE_GRACE_S = 60.0
# rate_counters.bucket is String(200); longer bucket names are hashed so the key always fits.
_MAX_BUCKET_CHARS = 180


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int  # never negative
    reset_s: float  # seconds until the current window ends (Retry-After, x-ratelimit-reset-*)


class RateLimiter(Protocol):
    async def hit(self, bucket: str, limit: int, amount: int = 1) -> RateDecision:
        """Count ``amount`` in the bucket's current window if the count stays <= ``limit``; a refused hit
        counts nothing (a client hammering a full bucket does not push its own limit further out)."""
        ...

    async def peek(self, bucket: str, limit: int) -> RateDecision:
        """Change nothing; allowed iff the window's count is below ``limit`` (tpm, before a request)."""
        ...

    async def add(self, bucket: str, amount: int) -> None:
        """Count ``amount`` unconditionally (tpm, the tokens a request used, after it)."""
        ...


def _window(now: float) -> int:
    return int(now // WINDOW_S)


def _reset_s(window: int, now: float) -> float:
    return (window + 1) * WINDOW_S - now


def _decision(allowed: bool, limit: int, count: int, window: int, now: float) -> RateDecision:
    return RateDecision(allowed, limit, max(0, limit - count), _reset_s(window, now))


def _check_amount(amount: int) -> None:
    # Counters only grow within a window; a negative amount would let a caller mint headroom.
    if amount < 0:
        raise ValueError(f"rate-limit amount must not be negative: {amount}")


class MemoryRateLimiter:
    """Per-process counters: a dict of (bucket, window) → count. Everything runs on the event loop's
    thread without awaiting, so each method is atomic without a lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[tuple[str, int], int] = {}
        self._newest_window = -1

    def __len__(self) -> int:
        """How many counters are held (old windows are dropped, so this stays bounded)."""
        return len(self._counts)

    def _now(self) -> tuple[float, int]:
        now = self._clock()
        window = _window(now)
        if window > self._newest_window:
            # A new minute: every older window is over. One pass per minute keeps memory bounded by the
            # buckets active in the current window without scanning on every hit.
            self._newest_window = window
            self._counts = {key: n for key, n in self._counts.items() if key[1] >= window}
        return now, window

    async def hit(self, bucket: str, limit: int, amount: int = 1) -> RateDecision:
        _check_amount(amount)
        now, window = self._now()
        count = self._counts.get((bucket, window), 0)
        if count + amount > limit:
            return _decision(False, limit, count, window, now)
        self._counts[(bucket, window)] = count + amount
        return _decision(True, limit, count + amount, window, now)

    async def peek(self, bucket: str, limit: int) -> RateDecision:
        now, window = self._now()
        count = self._counts.get((bucket, window), 0)
        return _decision(count < limit, limit, count, window, now)

    async def add(self, bucket: str, amount: int) -> None:
        _check_amount(amount)
        if amount == 0:
            return
        _, window = self._now()
        self._counts[(bucket, window)] = self._counts.get((bucket, window), 0) + amount


class SQLRateLimiter:
    """Counters in ``rate_counters``, shared by every process using the database.

    ``hit`` is one statement, an upsert whose update only applies while the sum stays within the limit:

        INSERT INTO rate_counters (bucket, count, expires_at) VALUES (:key, :n, :window_end)
        ON CONFLICT (bucket) DO UPDATE SET count = rate_counters.count + excluded.count
        WHERE rate_counters.count + excluded.count <= :limit
        RETURNING rate_counters.count

    PostgreSQL locks the conflicting row and evaluates the WHERE on its newest version, so concurrent hits
    from any number of connections or replicas serialise on the row and never pass the limit together.
    SQLite (>= 3.35 for RETURNING and the upsert's WHERE) serialises writers on the database. No row back
    means refused; only then is the current count read (same transaction), for ``remaining``.
    """

    def __init__(
        self, store: SQLStore, clock: Callable[[], float] = time.time, *, prune_every: int = PRUNE_EVERY
    ) -> None:
        self._store = store
        self._clock = clock
        self._prune_every = prune_every
        self._hits = 0

    def _insert(self, key: str, amount: int, window: int) -> postgresql.Insert | sqlite.Insert:
        insert = sqlite.insert if self._store.is_sqlite else postgresql.insert
        expires_at = datetime.fromtimestamp((window + 1) * WINDOW_S, UTC)
        return insert(rate_counters).values(bucket=key, count=amount, expires_at=expires_at)

    async def hit(self, bucket: str, limit: int, amount: int = 1) -> RateDecision:
        _check_amount(amount)
        now = self._clock()
        window = _window(now)
        key = _key(bucket, window)
        count_column = rate_counters.c["count"]
        async with self._store.engine.begin() as conn:
            if amount > limit:
                # Can never fit, and the upsert's INSERT branch has no WHERE: it would store a new row over
                # the limit. Refuse without writing.
                count = await _read_count(conn, key)
                allowed = False
            else:
                insert = self._insert(key, amount, window)
                upsert = insert.on_conflict_do_update(
                    index_elements=["bucket"],
                    set_={"count": count_column + insert.excluded["count"]},
                    where=count_column + insert.excluded["count"] <= limit,
                ).returning(count_column)
                after = (await conn.execute(upsert)).scalar_one_or_none()
                allowed = after is not None
                count = after if after is not None else await _read_count(conn, key)
        self._hits += 1
        if self._hits % self._prune_every == 0:
            await self.prune()
        return _decision(allowed, limit, count, window, now)

    async def peek(self, bucket: str, limit: int) -> RateDecision:
        now = self._clock()
        window = _window(now)
        async with self._store.engine.connect() as conn:
            count = await _read_count(conn, _key(bucket, window))
        return _decision(count < limit, limit, count, window, now)

    async def add(self, bucket: str, amount: int) -> None:
        _check_amount(amount)
        if amount == 0:
            return
        window = _window(self._clock())
        count_column = rate_counters.c["count"]
        insert = self._insert(_key(bucket, window), amount, window)
        upsert = insert.on_conflict_do_update(
            index_elements=["bucket"], set_={"count": count_column + insert.excluded["count"]}
        )
        async with self._store.engine.begin() as conn:
            await conn.execute(upsert)

    async def prune(self) -> int:
        """Delete rows whose window ended more than ``PRUNE_GRACE_S`` ago; how many were deleted."""
        cutoff = datetime.fromtimestamp(self._clock() - PRUNE_GRACE_S, UTC)
        async with self._store.engine.begin() as conn:
            result = await conn.execute(delete(rate_counters).where(rate_counters.c.expires_at <= cutoff))
        return int(result.rowcount)


def _key(bucket: str, window: int) -> str:
    if len(bucket) > _MAX_BUCKET_CHARS:
        bucket = "sha256:" + hashlib.sha256(bucket.encode()).hexdigest()
    return f"{bucket}:{window}"


async def _read_count(conn: AsyncConnection, key: str) -> int:
    query = select(rate_counters.c["count"]).where(rate_counters.c.bucket == key)
    return int((await conn.execute(query)).scalar_one_or_none() or 0)


def rate_limiter(store: SQLStore) -> RateLimiter:
    """Shared counters in PostgreSQL (many replicas); per-process counters for SQLite, which serves one
    process (so a SQLite deployment's limits hold per process, never across several)."""
    if store.is_sqlite:
        return MemoryRateLimiter()
    return SQLRateLimiter(store)
