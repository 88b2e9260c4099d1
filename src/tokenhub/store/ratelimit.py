"""Rate limits by GCRA (the generic cell rate algorithm): requests, tokens or failed logins per bucket.

This module owns the accounting only; the caller chooses the buckets (``rpm:<key id>``, ``tpm:<key id>``,
``authfail:<client ip>``, …) and the limits, and turns a ``RateDecision`` into a 429 and its headers.

A limit of N per minute refills continuously, one unit every ``60 / N`` seconds, with a burst capacity of N.
Each bucket keeps one number, its theoretical arrival time ``tat`` (epoch seconds): the moment the bucket
will be empty again. Taking ``amount`` units moves it to ``max(tat, now) + amount * 60 / N``, allowed while
that stays within a minute of now. Unlike fixed one-minute windows, a client that used up its limit waits
``60 / N`` seconds for the next unit (its Retry-After), not until the minute ends, and cannot burst twice the
limit across a window edge.

Two implementations of ``RateLimiter``:

* ``MemoryRateLimiter`` keeps the tats in the process. Each replica (each worker process) has its own, so
  N processes together let through up to N times the limit. ``rate_limiter()`` picks it for SQLite, which
  serves a single process: a SQLite deployment's limits are per process.
* ``SQLRateLimiter`` keeps them in the ``rate_counters`` table, so every replica sharing the PostgreSQL
  database shares the limits. A hit is one conditional upsert, atomic across processes. ``now`` comes from
  each process's own clock, so replicas must keep their clocks in sync (NTP): a replica whose clock is a few
  seconds ahead sees buckets that many seconds emptier than they are.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import ColumnElement, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningInsert

from tokenhub.store.schema import rate_counters
from tokenhub.store.sql import SQLStore

# Limits are per minute: a bucket holds at most this many seconds of use ahead of now.
WINDOW_S = 60.0
# Epoch seconds as floats round by up to ~0.1 µs per step, so a burst of exactly ``limit`` can land a hair
# past the window; hits fit to within this much. Far below any interval that matters (1 ms: 60 000/min).
SLACK_S = 0.001
# Old rows are deleted after every this many hits of one limiter, not on every request: the DELETE is cheap
# (indexed on expires_at) but needless on the hot path.
PRUNE_EVERY = 100
# A row is deleted only this long after its tat passed, so a replica whose clock lags a little behind still
# finds the tat it would count from.
PRUNE_GRACE_S = 60.0
# rate_counters.bucket is String(200); longer bucket names are hashed so the key always fits.
_MAX_BUCKET_CHARS = 200


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int  # whole units that could be taken now, 0..limit
    reset_s: float  # seconds until the bucket is full again (x-ratelimit-reset-*)
    retry_after_s: float  # refused: seconds until this hit would be allowed (Retry-After); 0.0 if allowed


class RateLimiter(Protocol):
    async def hit(self, bucket: str, limit: int, amount: int = 1) -> RateDecision:
        """Take ``amount`` units if they fit; a refused hit takes nothing (a client hammering a full bucket
        does not push its own refill further out)."""
        ...

    async def peek(self, bucket: str, limit: int) -> RateDecision:
        """Change nothing; the decision ``hit(bucket, limit, 1)`` would get (tpm, before a request whose
        token count is not known yet)."""
        ...

    async def add(self, bucket: str, limit: int, amount: int) -> None:
        """Take ``amount`` units unconditionally, even past the capacity (tpm, the tokens a request used,
        after it): the bucket then refuses until enough has refilled."""
        ...


def _interval(limit: int) -> float:
    """Seconds per unit: a limit of N per minute refills one unit every 60 / N seconds."""
    if limit < 1:
        raise ValueError(f"rate limit must be positive: {limit}")
    return WINDOW_S / limit


def _check_amount(amount: int) -> None:
    # A tat only moves forward; a negative amount would let a caller mint headroom.
    if amount < 0:
        raise ValueError(f"rate-limit amount must not be negative: {amount}")


def _latest(now: float) -> float:
    """The furthest a hit may move a tat: a full bucket, a window of use ahead of now."""
    return now + WINDOW_S + SLACK_S


def _take(tat: float, now: float, limit: int, amount: int) -> float | None:
    """The bucket's tat after taking ``amount``, or None if it does not fit. An idle bucket's tat is in the
    past: it counts from now."""
    new_tat = max(tat, now) + amount * _interval(limit)
    return new_tat if amount <= limit and new_tat <= _latest(now) else None


def _decision(allowed: bool, limit: int, tat: float, now: float, amount: int) -> RateDecision:
    """``tat`` is the bucket's after the hit: the new one if allowed, the unchanged one if refused."""
    interval = _interval(limit)
    busy_s = max(tat, now) - now  # the use still ahead; it drains at one second per second
    remaining = min(limit, max(0, math.floor((WINDOW_S + SLACK_S - busy_s) / interval)))
    # Positive even when a concurrent prune emptied the bucket between the refusal and the read.
    retry_after_s = 0.0 if allowed else max(busy_s + amount * interval - WINDOW_S, SLACK_S)
    return RateDecision(allowed, limit, remaining, busy_s, retry_after_s)


class MemoryRateLimiter:
    """Per-process tats: a dict of bucket → tat. Everything runs on the event loop's thread without awaiting,
    so each method is atomic without a lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        """How many buckets are held (idle ones are dropped, so this stays bounded)."""
        return len(self._tats)

    def _now(self) -> float:
        now = self._clock()
        if now >= self._next_sweep:
            # A bucket whose tat has passed is empty, the same as no entry. One pass per window keeps memory
            # bounded by the buckets used lately without scanning on every hit.
            self._next_sweep = now + WINDOW_S
            self._tats = {bucket: tat for bucket, tat in self._tats.items() if tat > now}
        return now

    async def hit(self, bucket: str, limit: int, amount: int = 1) -> RateDecision:
        _check_amount(amount)
        now = self._now()
        tat = self._tats.get(bucket, now)
        new_tat = _take(tat, now, limit, amount)
        if new_tat is None:
            return _decision(False, limit, tat, now, amount)
        self._tats[bucket] = new_tat
        return _decision(True, limit, new_tat, now, amount)

    async def peek(self, bucket: str, limit: int) -> RateDecision:
        now = self._now()
        tat = self._tats.get(bucket, now)
        return _decision(_take(tat, now, limit, 1) is not None, limit, tat, now, 1)

    async def add(self, bucket: str, limit: int, amount: int) -> None:
        _check_amount(amount)
        interval = _interval(limit)
        if amount == 0:
            return
        now = self._now()
        self._tats[bucket] = max(self._tats.get(bucket, now), now) + amount * interval


class SQLRateLimiter:
    """Tats in ``rate_counters``, shared by every process using the database.

    ``hit`` is one statement, an upsert whose update only applies while the new tat stays within the window
    (``:cost`` is ``amount * 60 / limit``, ``:latest`` is ``now + 60`` and a millisecond):

        INSERT INTO rate_counters (bucket, tat, expires_at) VALUES (:key, :now + :cost, :latest)
        ON CONFLICT (bucket) DO UPDATE
        SET tat = CASE WHEN rate_counters.tat > :now THEN rate_counters.tat ELSE :now END + :cost,
            expires_at = excluded.expires_at
        WHERE CASE WHEN rate_counters.tat > :now THEN rate_counters.tat ELSE :now END + :cost <= :latest
        RETURNING rate_counters.tat

    (CASE because PostgreSQL's GREATEST and SQLite's two-argument max differ.) PostgreSQL locks the
    conflicting row and evaluates the WHERE on its newest version, so concurrent hits from any number of
    connections or replicas serialise on the row and never pass the limit together. SQLite (>= 3.35 for
    RETURNING and the upsert's WHERE) serialises writers on the database. No row back means refused; only
    then is the current tat read (same transaction), for ``remaining`` and ``retry_after_s``.

    ``expires_at`` is a time by which the row's tat has passed and the row means nothing: ``:latest`` for a
    hit (an allowed hit leaves the tat no later), the tat itself after an ``add``. ``prune`` goes by it.
    """

    def __init__(
        self, store: SQLStore, clock: Callable[[], float] = time.time, *, prune_every: int = PRUNE_EVERY
    ) -> None:
        self._store = store
        self._clock = clock
        self._prune_every = prune_every
        self._hits = 0

    def _upsert(
        self, key: str, now: float, cost: float, *, expires_at: float, latest: float | None
    ) -> ReturningInsert[float]:
        """Move the bucket's tat to ``max(tat, now) + cost`` (a new row counts from now), only where that is
        no later than ``latest`` if given; RETURNING the new tat."""
        tat = rate_counters.c.tat
        new_tat = case((tat > now, tat), else_=now) + cost
        insert = (sqlite.insert if self._store.is_sqlite else postgresql.insert)(rate_counters).values(
            bucket=key, tat=now + cost, expires_at=_timestamp(expires_at)
        )
        where: ColumnElement[bool] | None = None if latest is None else new_tat <= latest
        return insert.on_conflict_do_update(
            index_elements=["bucket"],
            set_={"tat": new_tat, "expires_at": insert.excluded.expires_at},
            where=where,
        ).returning(tat)

    async def hit(self, bucket: str, limit: int, amount: int = 1) -> RateDecision:
        _check_amount(amount)
        cost = amount * _interval(limit)
        now = self._clock()
        latest = _latest(now)
        key = _key(bucket)
        if not self._store.is_sqlite:
            new_tat = None
            if amount <= limit:  # as below
                new_tat = await self._store.postgres_fetchval(
                    _PG_HIT, key, now, cost, latest, _timestamp(latest)
                )
            tat = new_tat if new_tat is not None else await self._postgres_tat(key, now)
            return await self._counted(_decision(new_tat is not None, limit, tat, now, amount))
        async with self._store.engine.begin() as conn:
            new_tat = None
            # More than the limit can never fit, and the upsert's INSERT branch has no WHERE: it would store a
            # new row over the limit. Refuse without writing.
            if amount <= limit:
                new_tat = (
                    await conn.execute(self._upsert(key, now, cost, expires_at=latest, latest=latest))
                ).scalar_one_or_none()
            tat = new_tat if new_tat is not None else await _read_tat(conn, key, now)
        return await self._counted(_decision(new_tat is not None, limit, tat, now, amount))

    async def _counted(self, decision: RateDecision) -> RateDecision:
        self._hits += 1
        if self._hits % self._prune_every == 0:
            await self.prune()
        return decision

    async def peek(self, bucket: str, limit: int) -> RateDecision:
        now = self._clock()
        if not self._store.is_sqlite:
            tat = await self._postgres_tat(_key(bucket), now)
        else:
            async with self._store.engine.connect() as conn:
                tat = await _read_tat(conn, _key(bucket), now)
        return _decision(_take(tat, now, limit, 1) is not None, limit, tat, now, 1)

    async def _postgres_tat(self, key: str, now: float) -> float:
        tat = await self._store.postgres_fetchval("SELECT tat FROM rate_counters WHERE bucket = $1", key)
        return now if tat is None else float(tat)

    async def add(self, bucket: str, limit: int, amount: int) -> None:
        _check_amount(amount)
        cost = amount * _interval(limit)
        if amount == 0:
            return
        now = self._clock()
        key = _key(bucket)
        if not self._store.is_sqlite:
            await self._store.postgres_fetchval(_PG_ADD, key, now, cost)
            return
        async with self._store.engine.begin() as conn:
            tat = (
                await conn.execute(self._upsert(key, now, cost, expires_at=now + cost, latest=None))
            ).scalar_one()
            # Only the database knew the tat this add moved on from; the row stays locked until commit, so
            # expires_at follows it. A second statement is fine here: adds come after a request, not before.
            await conn.execute(
                update(rate_counters).where(rate_counters.c.bucket == key).values(expires_at=_timestamp(tat))
            )

    async def prune(self) -> int:
        """Delete rows that expired more than ``PRUNE_GRACE_S`` ago; how many were deleted."""
        cutoff = _timestamp(self._clock() - PRUNE_GRACE_S)
        async with self._store.engine.begin() as conn:
            result = await conn.execute(delete(rate_counters).where(rate_counters.c.expires_at <= cutoff))
        return int(result.rowcount)


# On PostgreSQL, the statements above as text, each one autocommitted round trip (``postgres_fetchval``:
# through SQLAlchemy's pool and transaction a hit was six, 1.8 ms of the gateway's CPU a request on the bench
# machine). An add sets ``expires_at`` from the new tat in the same statement. $2 is now, $3 the cost.
_PG_HIT = """
INSERT INTO rate_counters AS counter (bucket, tat, expires_at) VALUES ($1, $2::float8 + $3::float8, $5)
ON CONFLICT (bucket) DO UPDATE
SET tat = CASE WHEN counter.tat > $2::float8 THEN counter.tat ELSE $2::float8 END + $3::float8,
    expires_at = excluded.expires_at
WHERE CASE WHEN counter.tat > $2::float8 THEN counter.tat ELSE $2::float8 END + $3::float8 <= $4::float8
RETURNING counter.tat
"""
_PG_ADD = """
INSERT INTO rate_counters AS counter (bucket, tat, expires_at)
VALUES ($1, $2::float8 + $3::float8, to_timestamp($2::float8 + $3::float8))
ON CONFLICT (bucket) DO UPDATE
SET tat = CASE WHEN counter.tat > $2::float8 THEN counter.tat ELSE $2::float8 END + $3::float8,
    expires_at = to_timestamp(
        CASE WHEN counter.tat > $2::float8 THEN counter.tat ELSE $2::float8 END + $3::float8
    )
"""


def _key(bucket: str) -> str:
    if len(bucket) > _MAX_BUCKET_CHARS:
        return "sha256:" + hashlib.sha256(bucket.encode()).hexdigest()
    return bucket


def _timestamp(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


async def _read_tat(conn: AsyncConnection, key: str, now: float) -> float:
    """The bucket's tat; ``now`` (an empty bucket) if it has no row."""
    tat = (
        await conn.execute(select(rate_counters.c.tat).where(rate_counters.c.bucket == key))
    ).scalar_one_or_none()
    return now if tat is None else float(tat)


def rate_limiter(store: SQLStore) -> RateLimiter:
    """Shared tats in PostgreSQL (many replicas); per-process tats for SQLite, which serves one process (so a
    SQLite deployment's limits hold per process, never across several)."""
    if store.is_sqlite:
        return MemoryRateLimiter()
    return SQLRateLimiter(store)
