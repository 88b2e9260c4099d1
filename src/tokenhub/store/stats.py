"""Read-side queries over ``request_logs`` for the admin API: windowed aggregates and a paged log.

Everything is computed by the database; Python only receives one row per group (stats) or one page
of rows (the log). Both functions run unchanged on SQLite and PostgreSQL.

Percentiles use one definition on both dialects, that of PostgreSQL's ``percentile_cont``: linear
interpolation between the closest ranks. For the ``n`` non-null values of a group sorted ascending,
``v[0] … v[n-1]``, the ``p``-th percentile is at position ``h = p * (n - 1)``::

    lo = floor(h), hi = ceil(h)
    value = v[lo] + (h - lo) * (v[hi] - v[lo])

e.g. latencies 10, 20, …, 100 give p50 = 55 and p95 = 95.5; a single value is every percentile of
itself; no values give ``None``. PostgreSQL computes it with ``percentile_cont(p) WITHIN GROUP``;
SQLite, which has no percentile function, ranks rows with window functions and applies the formula
above in the same double-precision steps, so both dialects return the same numbers for the same rows.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    RowMapping,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    select,
    tuple_,
    union_all,
)

from tokenhub.store.models import RequestLog
from tokenhub.store.schema import request_logs as rl
from tokenhub.store.sql import SQLStore

NO_API_KEY = "-"
"""The ``by_api_key`` key of requests made without an API key (``api_key_id`` is null)."""

CLIENT_CLOSED = 499
"""The status logged when the client went away; counted as ``client_closed``, not as an error."""

_P50 = 0.5
_P95 = 0.95
_PERCENTILE_LABELS = ("p50_latency_ms", "p95_latency_ms", "p50_ttft_ms", "p95_ttft_ms")

# Far longer than any cursor we issue; bounds the work spent decoding a hostile one.
_MAX_CURSOR_LEN = 512

# (name, grouping expression); "global" has none. The names are the ``by_<name>`` fields of ``Stats``.
_GROUPINGS: tuple[tuple[str, ColumnElement[str] | None], ...] = (
    ("global", None),
    ("model", rl.c.model),
    ("provider", rl.c.provider),
    ("api_key", func.coalesce(rl.c.api_key_id, NO_API_KEY)),
    ("mode", rl.c.mode),
    ("path", rl.c.path),
)


@dataclass(frozen=True)
class Aggregate:
    """The requests of one group. Latencies in milliseconds, cost in US dollars.

    ``errors`` counts statuses >= 400 except 499; ``client_closed`` counts 499s; ``error_rate`` is
    ``errors / requests`` (0.0 with no requests). Percentiles are ``None`` when there is no value:
    no requests, or (ttft) no streamed request with a first token.
    """

    requests: int
    errors: int
    client_closed: int
    error_rate: float
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p50_ttft_ms: float | None
    p95_ttft_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


EMPTY = Aggregate(
    requests=0,
    errors=0,
    client_closed=0,
    error_rate=0.0,
    p50_latency_ms=None,
    p95_latency_ms=None,
    p50_ttft_ms=None,
    p95_ttft_ms=None,
    input_tokens=0,
    output_tokens=0,
    cost_usd=0.0,
)


@dataclass(frozen=True)
class Stats:
    """Aggregates over the requests logged at or after ``since`` (``window_s`` seconds before "now").

    Each ``by_*`` mapping holds only groups that had requests, busiest first (ties by key).
    """

    window_s: int
    since: datetime
    global_: Aggregate
    by_model: Mapping[str, Aggregate]
    by_provider: Mapping[str, Aggregate]
    by_api_key: Mapping[str, Aggregate]
    by_mode: Mapping[str, Aggregate]
    by_path: Mapping[str, Aggregate]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dicts: ``since`` as ISO 8601 UTC, each aggregate as a dict of its fields."""
        out: dict[str, Any] = {
            "window_s": self.window_s,
            "since": self.since.isoformat(),
            "global": self.global_.to_json(),
        }
        for name in ("by_model", "by_provider", "by_api_key", "by_mode", "by_path"):
            groups: Mapping[str, Aggregate] = getattr(self, name)
            out[name] = {key: aggregate.to_json() for key, aggregate in groups.items()}
        return out


async def request_stats(store: SQLStore, *, window_s: int, now: datetime | None = None) -> Stats:
    """Aggregate the requests logged in the last ``window_s`` seconds (``created_at >= now - window_s``).

    ``now`` defaults to the current time; a naive ``now`` is taken as UTC (the store's convention).
    One statement computes every group, so all of them see the same rows.

    Raises ``ValueError`` if ``window_s`` is not positive.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    since = _as_utc(now or datetime.now(UTC)) - timedelta(seconds=window_s)
    query = union_all(*(_grouping_select(name, key, since, store.is_sqlite) for name, key in _GROUPINGS))

    global_ = EMPTY
    groups: dict[str, list[tuple[str, Aggregate]]] = {name: [] for name, _ in _GROUPINGS[1:]}
    async with store.engine.connect() as conn:
        for row in await conn.execute(query):
            aggregate = _aggregate(row._mapping)
            if row.grouping == "global":
                global_ = aggregate
            else:
                groups[row.grouping].append((row.key, aggregate))

    def ordered(name: str) -> dict[str, Aggregate]:
        return dict(sorted(groups[name], key=lambda item: (-item[1].requests, item[0])))

    return Stats(
        window_s=window_s,
        since=since,
        global_=global_,
        by_model=ordered("model"),
        by_provider=ordered("provider"),
        by_api_key=ordered("api_key"),
        by_mode=ordered("mode"),
        by_path=ordered("path"),
    )


async def request_log_page(
    store: SQLStore,
    *,
    limit: int,
    cursor: str | None,
    model: str | None = None,
    status: int | None = None,
    since: datetime | None = None,
) -> tuple[list[RequestLog], str | None]:
    """One page of logged requests, newest first (``created_at``, then ``id``, both descending).

    ``cursor`` is ``None`` for the first page, else the cursor the previous page returned; the
    returned cursor is ``None`` on the last page. Filters: exact ``model``, exact HTTP ``status``,
    ``created_at >= since`` (a naive ``since`` is taken as UTC). Keep the filters the same while
    paging. Keyset pagination: rows written meanwhile never shift a page, and rows sharing a
    ``created_at`` are neither skipped nor repeated. Returned ``created_at`` values are aware UTC.

    Raises ``ValueError`` for a malformed cursor or a ``limit`` below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    query = select(*(rl.c[field.name] for field in fields(RequestLog)))
    if cursor is not None:
        after_at, after_id = _decode_cursor(cursor)
        # A row-value comparison, not an OR of two: PostgreSQL can walk an index on (created_at, id)
        # straight to the page's first row.
        query = query.where(tuple_(rl.c.created_at, rl.c.id) < (after_at, after_id))
    if model is not None:
        query = query.where(rl.c.model == model)
    if status is not None:
        query = query.where(rl.c.status == status)
    if since is not None:
        query = query.where(rl.c.created_at >= _as_utc(since))
    # One row more than asked says whether another page follows, without a second query.
    query = query.order_by(rl.c.created_at.desc(), rl.c.id.desc()).limit(limit + 1)

    async with store.engine.connect() as conn:
        result = await conn.execute(query)
        page = [_request_log(row._mapping) for row in result]
    if len(page) <= limit:
        return page, None
    page = page[:limit]
    return page, _encode_cursor(page[-1].created_at, page[-1].id)


def _grouping_select(name: str, key: ColumnElement[str] | None, since: datetime, sqlite: bool) -> Select[Any]:
    """One ``(grouping, key, measures…)`` row per group of ``key`` (one row in all for "global")."""
    columns: list[ColumnElement[Any]] = [
        rl.c.status,
        rl.c.input_tokens,
        rl.c.output_tokens,
        rl.c.cost_usd,
        rl.c.latency_ms,
        rl.c.ttft_ms,
    ]
    if key is not None:
        columns.append(key.label("key"))
    if sqlite:
        # Ranks (0-based) and counts per group, for the percentile formula in _sqlite_percentile.
        columns += [
            (func.row_number().over(partition_by=key, order_by=rl.c.latency_ms) - 1).label("latency_rank"),
            func.count().over(partition_by=key).label("latency_n"),
            # Nulls last, so non-null ttfts take ranks 0 … ttft_n - 1.
            (
                func.row_number().over(partition_by=key, order_by=(rl.c.ttft_ms.is_(None), rl.c.ttft_ms)) - 1
            ).label("ttft_rank"),
            func.count(rl.c.ttft_ms).over(partition_by=key).label("ttft_n"),
        ]
    # The key is computed in a subquery and grouped on by name: on PostgreSQL, grouping on an
    # expression with a bound parameter (the coalesce) would not match the same expression selected.
    src = select(*columns).where(rl.c.created_at >= since).subquery("windowed")

    if sqlite:
        percentiles = [
            _sqlite_percentile(p, src.c[f"{value}_ms"], src.c[f"{value}_rank"], src.c[f"{value}_n"])
            for value in ("latency", "ttft")
            for p in (_P50, _P95)
        ]
    else:
        percentiles = [
            func.percentile_cont(literal(p, Float)).within_group(src.c[f"{value}_ms"])
            for value in ("latency", "ttft")
            for p in (_P50, _P95)
        ]
    query = select(
        literal(name, String).label("grouping"),
        (src.c.key if key is not None else literal("", String)).label("key"),
        func.count().label("requests"),
        func.sum(case((and_(src.c.status >= 400, src.c.status != CLIENT_CLOSED), 1), else_=0)).label(
            "errors"
        ),
        func.sum(case((src.c.status == CLIENT_CLOSED, 1), else_=0)).label("client_closed"),
        *(percentile.label(label) for percentile, label in zip(percentiles, _PERCENTILE_LABELS, strict=True)),
        func.sum(src.c.input_tokens).label("input_tokens"),
        func.sum(src.c.output_tokens).label("output_tokens"),
        func.sum(src.c.cost_usd).label("cost_usd"),
    ).select_from(src)
    return query.group_by(src.c.key) if key is not None else query


def _sqlite_percentile(
    p: float, value: ColumnElement[Any], rank: ColumnElement[Any], n: ColumnElement[Any]
) -> ColumnElement[Any]:
    """``percentile_cont(p)`` as an aggregate over rows carrying their 0-based ``rank`` among ``n`` values.

    Mirrors PostgreSQL's float8 arithmetic step by step (``h = p * (n - 1)``, ``lo + (h - lo) * (hi -
    lo)``) so the results agree to the bit. ``n`` is the same on every row of a group.
    """
    h = literal(p, Float) * (n - 1)
    lo = cast(h, Integer)  # truncation: floor, since h >= 0 whenever there is a value
    lo_value = func.max(case((rank == lo, value)))
    # ceil(h) is lo + 1 unless h is whole; then the fraction below is 0 and lo + 0 * (next - lo) is
    # exactly lo, as PostgreSQL returns. Past the last value (n = 1) there is no next: use lo's.
    hi_value = func.coalesce(func.max(case((rank == lo + 1, value))), lo_value)
    # No values (n = 0): no rank matches a non-null value, so lo_value is NULL and so is the result.
    return lo_value + func.max(h - lo) * (hi_value - lo_value)


def _aggregate(row: RowMapping) -> Aggregate:
    requests = int(row["requests"])
    errors = int(row["errors"] or 0)

    def optional(label: str) -> float | None:
        value = row[label]
        return None if value is None else float(value)

    return Aggregate(
        requests=requests,
        errors=errors,
        client_closed=int(row["client_closed"] or 0),
        error_rate=errors / requests if requests else 0.0,
        p50_latency_ms=optional("p50_latency_ms"),
        p95_latency_ms=optional("p95_latency_ms"),
        p50_ttft_ms=optional("p50_ttft_ms"),
        p95_ttft_ms=optional("p95_ttft_ms"),
        # Sums are NULL over no rows (an empty window's global row).
        input_tokens=int(row["input_tokens"] or 0),
        output_tokens=int(row["output_tokens"] or 0),
        cost_usd=float(row["cost_usd"] or 0.0),
    )


def _request_log(row: RowMapping) -> RequestLog:
    values = dict(row)
    values["created_at"] = _as_utc(values["created_at"])  # SQLite hands back naive UTC
    return RequestLog(**values)


def _as_utc(at: datetime) -> datetime:
    """Aware UTC. Naive is taken as UTC; aware values are converted, which SQLite needs: it stores the
    wall-clock fields as text and ignores the offset, so every bound datetime must already be UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _encode_cursor(created_at: datetime, row_id: str) -> str:
    payload = json.dumps([_as_utc(created_at).isoformat(), row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor encodes. Raises ``ValueError`` if it is not one of ours."""
    if len(cursor) > _MAX_CURSOR_LEN:
        raise ValueError("malformed cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError) as exc:  # bad base64, bad UTF-8, bad JSON, non-ASCII input
        raise ValueError("malformed cursor") from exc
    match decoded:
        case [str() as at_text, str() as row_id]:
            pass
        case _:
            raise ValueError("malformed cursor")
    try:
        at = datetime.fromisoformat(at_text)
    except ValueError as exc:
        raise ValueError("malformed cursor") from exc
    if at.tzinfo is None:
        raise ValueError("malformed cursor")
    return at.astimezone(UTC), row_id
