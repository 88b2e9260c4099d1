"""Admin-API queries on real databases: SQLite, and PostgreSQL when TOKENHUB_TEST_POSTGRES_URL is set.

Percentiles follow percentile_cont (linear interpolation at position p * (n - 1) of the sorted values);
the expected values below are worked out by hand with that definition.
"""

from __future__ import annotations

import base64
import itertools
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.databases import BACKENDS, POSTGRES_URL, open_store
from tokenhub.store import RequestLog, SQLStore
from tokenhub.store.stats import Aggregate, Stats, request_log_page, request_stats

NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
HOUR = 3600


def log(
    *,
    at: datetime,
    model: str = "alpha",
    provider: str = "openai",
    api_key_id: str | None = None,
    mode: str = "normal",
    path: str = "direct",
    status: int = 200,
    latency_ms: float = 10.0,
    ttft_ms: float | None = None,
    input_tokens: int = 1,
    output_tokens: int = 1,
    cost_usd: float = 0.0,
    request_id: str = "req",
) -> RequestLog:
    return RequestLog(
        id=str(uuid.uuid4()),
        request_id=request_id,
        created_at=at,
        api_key_id=api_key_id,
        model=model,
        provider=provider,
        mode=mode,
        path=path,
        stream=ttft_ms is not None,
        status=status,
        error_class=None if status == 200 else "upstream",
        error_message=None,
        reason="routed-normal",
        attempts=1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        tokens_estimated=False,
        cost_usd=cost_usd,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
    )


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLStore]:
    async with open_store(request.param, tmp_path) as store:
        yield store


def assert_aggregate(actual: Aggregate, **expected: Any) -> None:
    """Every field given must match (floats to 1e-9 relative); fields not given are not checked."""
    for name, value in expected.items():
        got = getattr(actual, name)
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-9), name
        else:
            assert got == value, name


# --- request_stats -------------------------------------------------------------------------------------


def fixture_rows() -> list[RequestLog]:
    """14 rows in the last hour and 3 older ones.

    alpha (openai, mode normal, path direct): latencies 10, 20, …, 100 ms, one minute apart;
      i = 0…5 use key k1, i = 6…9 no key; i = 3 is a 500, i = 8 a 499 (client closed);
      i = 0…4 streamed with ttft 5, 10, 15, 20, 25 ms; input i + 1, output 2 (i + 1) tokens, $0.01 each.
    beta (anthropic, mode fast, path temporal, key k2): latencies 800, 200, 600, 400 (unsorted on
      purpose); statuses 200, 429, 502, 200; no ttft; 100 in / 50 out tokens, $0.25 each.
    old (two hours ago): gamma and alpha rows with extreme values, outside a one-hour window.
    """
    rows = [
        log(
            at=NOW - timedelta(minutes=i),
            api_key_id="k1" if i < 6 else None,
            status={3: 500, 8: 499}.get(i, 200),
            latency_ms=10.0 * (i + 1),
            ttft_ms=5.0 * (i + 1) if i < 5 else None,
            input_tokens=i + 1,
            output_tokens=2 * (i + 1),
            cost_usd=0.01,
        )
        for i in range(10)
    ]
    rows += [
        log(
            at=NOW - timedelta(minutes=30, seconds=i),
            model="beta",
            provider="anthropic",
            api_key_id="k2",
            mode="fast",
            path="temporal",
            status=status,
            latency_ms=latency,
            input_tokens=100,
            output_tokens=50,
            cost_usd=0.25,
        )
        for i, (latency, status) in enumerate([(800.0, 200), (200.0, 429), (600.0, 502), (400.0, 200)])
    ]
    old = NOW - timedelta(hours=2)
    rows += [
        log(at=old, model="gamma", status=500, latency_ms=1e6, ttft_ms=1e6, input_tokens=10**6),
        log(at=old, model="alpha", status=499, latency_ms=1e6, cost_usd=100.0),
        log(at=old - timedelta(days=1), model="alpha", api_key_id="k9", mode="old", path="old"),
    ]
    return rows


ALPHA = {
    "requests": 10,
    "errors": 1,
    "client_closed": 1,
    "error_rate": 0.1,
    "p50_latency_ms": 55.0,  # h = 0.5 * 9 = 4.5: 50 + 0.5 * (60 - 50)
    "p95_latency_ms": 95.5,  # h = 0.95 * 9 = 8.55: 90 + 0.55 * (100 - 90)
    "p50_ttft_ms": 15.0,  # 5 values, h = 2: the third
    "p95_ttft_ms": 24.0,  # h = 3.8: 20 + 0.8 * (25 - 20)
    "input_tokens": 55,
    "output_tokens": 110,
    "cost_usd": 0.1,
}
BETA = {
    "requests": 4,
    "errors": 2,
    "client_closed": 0,
    "error_rate": 0.5,
    "p50_latency_ms": 500.0,  # sorted 200, 400, 600, 800; h = 1.5: 400 + 0.5 * 200
    "p95_latency_ms": 770.0,  # h = 2.85: 600 + 0.85 * 200
    "p50_ttft_ms": None,
    "p95_ttft_ms": None,
    "input_tokens": 400,
    "output_tokens": 200,
    "cost_usd": 1.0,
}


async def test_global_aggregate(store: SQLStore) -> None:
    await store.write_request_logs(fixture_rows())
    stats = await request_stats(store, window_s=HOUR, now=NOW)
    assert stats.window_s == HOUR
    assert stats.since == NOW - timedelta(hours=1)
    assert_aggregate(
        stats.global_,
        requests=14,
        errors=3,  # 500, 429, 502; the 499 is not an error
        client_closed=1,
        error_rate=3 / 14,
        # 10 … 100, 200, 400, 600, 800: h = 6.5 → 70 + 0.5 * 10; h = 12.35 → 600 + 0.35 * 200
        p50_latency_ms=75.0,
        p95_latency_ms=670.0,
        p50_ttft_ms=15.0,  # only alpha streamed; beta's null ttfts are ignored
        p95_ttft_ms=24.0,
        input_tokens=455,
        output_tokens=310,
        cost_usd=1.1,
    )


async def test_grouped_by_model_provider_mode_and_path(store: SQLStore) -> None:
    await store.write_request_logs(fixture_rows())
    stats = await request_stats(store, window_s=HOUR, now=NOW)
    # gamma only has old rows, so it is not a group at all; busiest group first.
    for groups, alpha_key, beta_key in [
        (stats.by_model, "alpha", "beta"),
        (stats.by_provider, "openai", "anthropic"),
        (stats.by_mode, "normal", "fast"),
        (stats.by_path, "direct", "temporal"),
    ]:
        assert list(groups) == [alpha_key, beta_key]
        assert_aggregate(groups[alpha_key], **ALPHA)
        assert_aggregate(groups[beta_key], **BETA)


async def test_grouped_by_api_key_with_null_as_dash(store: SQLStore) -> None:
    await store.write_request_logs(fixture_rows())
    stats = await request_stats(store, window_s=HOUR, now=NOW)
    assert list(stats.by_api_key) == ["k1", "-", "k2"]  # 6, 4, 4 requests; ties by key ("-" < "k2")
    assert_aggregate(
        stats.by_api_key["k1"],  # alpha i = 0…5
        requests=6,
        errors=1,
        client_closed=0,
        error_rate=1 / 6,
        p50_latency_ms=35.0,  # 10 … 60, h = 2.5
        p95_latency_ms=57.5,  # h = 4.75: 50 + 0.75 * 10
        p50_ttft_ms=15.0,
        p95_ttft_ms=24.0,
        input_tokens=21,
        output_tokens=42,
        cost_usd=0.06,
    )
    assert_aggregate(
        stats.by_api_key["-"],  # alpha i = 6…9
        requests=4,
        errors=0,
        client_closed=1,
        error_rate=0.0,
        p50_latency_ms=85.0,  # 70 … 100, h = 1.5
        p95_latency_ms=98.5,  # h = 2.85: 90 + 0.85 * 10
        p50_ttft_ms=None,  # none of them streamed
        p95_ttft_ms=None,
        input_tokens=34,
        output_tokens=68,
        cost_usd=0.04,
    )
    assert_aggregate(stats.by_api_key["k2"], **BETA)


async def test_window_excludes_older_rows_and_includes_its_start(store: SQLStore) -> None:
    await store.write_request_logs(
        [
            log(at=NOW, latency_ms=1.0),
            log(at=NOW - timedelta(seconds=60), latency_ms=2.0),  # exactly at the window's start
            log(at=NOW - timedelta(seconds=60, microseconds=1), latency_ms=4.0),
            log(at=NOW - timedelta(minutes=5), latency_ms=8.0),
        ]
    )
    stats = await request_stats(store, window_s=60, now=NOW)
    assert_aggregate(stats.global_, requests=2, p50_latency_ms=1.5, p95_latency_ms=1.95)
    wider = await request_stats(store, window_s=HOUR, now=NOW)
    assert wider.global_.requests == 4


async def test_widening_the_window_brings_old_rows_in(store: SQLStore) -> None:
    await store.write_request_logs(fixture_rows())
    stats = await request_stats(store, window_s=3 * HOUR, now=NOW)
    assert stats.global_.requests == 16
    assert list(stats.by_model) == ["alpha", "beta", "gamma"]
    assert stats.by_model["alpha"].client_closed == 2
    assert stats.by_model["gamma"].p50_ttft_ms == 1e6  # one value is every percentile of itself


async def test_now_in_another_timezone_means_the_same_instant(store: SQLStore) -> None:
    await store.write_request_logs(fixture_rows())
    utc = await request_stats(store, window_s=HOUR, now=NOW)
    plus_two = await request_stats(store, window_s=HOUR, now=NOW.astimezone(timezone(timedelta(hours=2))))
    naive = await request_stats(store, window_s=HOUR, now=NOW.replace(tzinfo=None))  # taken as UTC
    assert plus_two.to_json() == utc.to_json() == naive.to_json()


async def test_empty_window(store: SQLStore) -> None:
    await store.write_request_logs([log(at=NOW - timedelta(days=2))])
    stats = await request_stats(store, window_s=HOUR, now=NOW)
    assert_aggregate(
        stats.global_,
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
    assert stats.by_model == stats.by_provider == stats.by_api_key == stats.by_mode == stats.by_path == {}


async def test_window_must_be_positive(store: SQLStore) -> None:
    with pytest.raises(ValueError, match="window_s"):
        await request_stats(store, window_s=0, now=NOW)


async def test_to_json_shape(store: SQLStore) -> None:
    await store.write_request_logs(fixture_rows())
    out = (await request_stats(store, window_s=HOUR, now=NOW)).to_json()
    assert list(out) == [
        "window_s",
        "since",
        "global",
        "by_model",
        "by_provider",
        "by_api_key",
        "by_mode",
        "by_path",
    ]
    assert out["window_s"] == HOUR
    assert out["since"] == "2025-01-15T11:00:00+00:00"
    assert set(out["global"]) == set(ALPHA)
    assert out["by_model"]["beta"] == BETA | {"cost_usd": pytest.approx(1.0)}
    assert out["by_api_key"]["-"]["requests"] == 4


# Only where a PostgreSQL server is given (CI gives one): there is nothing to compare without it.
if POSTGRES_URL is not None:

    async def test_sqlite_and_postgresql_agree(tmp_path: Path) -> None:
        """The same rows give the same numbers on both: percentiles to the bit (same arithmetic)."""
        rng = random.Random(20250115)
        rows = [
            log(
                at=NOW - timedelta(seconds=rng.uniform(0, 2 * HOUR)),
                model=rng.choice(["a", "b", "c"]),
                provider=rng.choice(["p", "q"]),
                api_key_id=rng.choice(["k1", "k2", None]),
                mode=rng.choice(["normal", "fast", "cheap"]),
                path=rng.choice(["direct", "temporal"]),
                status=rng.choice([200, 200, 200, 400, 429, 499, 500, 502]),
                latency_ms=round(rng.uniform(1, 5000), 3),
                ttft_ms=rng.choice([None, round(rng.uniform(1, 500), 3)]),
                input_tokens=rng.randrange(10_000),
                output_tokens=rng.randrange(10_000),
                cost_usd=rng.uniform(0, 0.1),
            )
            for _ in range(300)
        ]
        results: list[Stats] = []
        for backend in ["sqlite", "postgresql"]:
            async with open_store(backend, tmp_path) as store:
                await store.write_request_logs(rows)
                results.append(await request_stats(store, window_s=HOUR, now=NOW))
        on_sqlite, on_postgres = (result.to_json() for result in results)
        assert on_sqlite["global"]["requests"] < len(rows)  # the window cut some rows
        for group_name in ["global", "by_model", "by_provider", "by_api_key", "by_mode", "by_path"]:
            groups_sqlite = on_sqlite[group_name] if group_name != "global" else {"": on_sqlite["global"]}
            groups_postgres = (
                on_postgres[group_name] if group_name != "global" else {"": on_postgres["global"]}
            )
            assert list(groups_sqlite) == list(groups_postgres)
            for key, aggregate in groups_sqlite.items():
                # Float sums may add in another order; everything else must be identical.
                assert aggregate == groups_postgres[key] | {"cost_usd": pytest.approx(aggregate["cost_usd"])}


# --- request_log_page ----------------------------------------------------------------------------------


def page_rows() -> list[RequestLog]:
    """25 rows; every three share a created_at (ties broken by id), models and statuses interleaved."""
    return [
        log(
            at=NOW - timedelta(seconds=i // 3),
            model="alpha" if i % 2 else "beta",
            status=[200, 500, 499][i % 3],
            request_id=f"req-{i:02d}",
        )
        for i in range(25)
    ]


async def all_pages(store: SQLStore, limit: int, **filters: Any) -> list[list[RequestLog]]:
    pages: list[list[RequestLog]] = []
    cursor: str | None = None
    while True:
        page, cursor = await request_log_page(store, limit=limit, cursor=cursor, **filters)
        pages.append(page)
        if cursor is None:
            return pages
        assert len(pages) <= 100, "paging does not end"


def assert_newest_first(rows: list[RequestLog]) -> None:
    assert all(a.created_at >= b.created_at for a, b in itertools.pairwise(rows))


@pytest.mark.parametrize("limit", [1, 2, 4, 5, 24, 25, 26, 100])
async def test_paging_yields_every_row_exactly_once(store: SQLStore, limit: int) -> None:
    rows = page_rows()
    await store.write_request_logs(rows)
    pages = await all_pages(store, limit)
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit  # no empty trailing page, even when 25 is a multiple of limit
    assert len(pages) == -(-25 // limit)
    seen = [row for page in pages for row in page]
    assert sorted(row.id for row in seen) == sorted(row.id for row in rows)
    assert_newest_first(seen)
    # The same order as one page holding everything: ties at a created_at keep one order across pages.
    everything, last_cursor = await request_log_page(store, limit=100, cursor=None)
    assert [row.id for row in seen] == [row.id for row in everything]
    assert last_cursor is None


async def test_rows_come_back_as_written_with_aware_utc_times(store: SQLStore) -> None:
    written = log(at=NOW - timedelta(microseconds=123), api_key_id="k1", ttft_ms=12.5, status=502)
    await store.write_request_logs([written])
    (read,), cursor = await request_log_page(store, limit=10, cursor=None)
    assert cursor is None
    assert read.created_at.tzinfo is not None and read.created_at.utcoffset() == timedelta(0)
    assert read == written


async def test_newest_first_across_distinct_times(store: SQLStore) -> None:
    await store.write_request_logs(
        [log(at=NOW - timedelta(minutes=m), request_id=f"m{m}") for m in (3, 1, 2)]
    )
    page, cursor = await request_log_page(store, limit=10, cursor=None)
    assert [row.request_id for row in page] == ["m1", "m2", "m3"]
    assert cursor is None


async def test_filters(store: SQLStore) -> None:
    await store.write_request_logs(page_rows())

    def ids(pages: list[list[RequestLog]]) -> list[str]:
        return sorted(row.request_id for page in pages for row in page)

    odd = [f"req-{i:02d}" for i in range(25) if i % 2]
    assert ids(await all_pages(store, 3, model="alpha")) == odd
    assert ids(await all_pages(store, 3, status=499)) == [f"req-{i:02d}" for i in range(2, 25, 3)]
    # created_at >= NOW - 2 s: the rows of seconds 0, 1 and 2, i.e. i = 0 … 8
    since = NOW - timedelta(seconds=2)
    assert ids(await all_pages(store, 2, since=since)) == [f"req-{i:02d}" for i in range(9)]
    assert ids(await all_pages(store, 2, since=since.replace(tzinfo=None))) == [
        f"req-{i:02d}" for i in range(9)
    ]
    both = await all_pages(store, 1, model="alpha", status=200, since=NOW - timedelta(seconds=5))
    assert ids(both) == ["req-03", "req-09", "req-15"]  # odd, i % 3 == 0, i // 3 <= 5
    assert await request_log_page(store, limit=5, cursor=None, model="nobody") == ([], None)


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!!",
        "",
        "%%%%",
        "é",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"t": 1}').decode(),
        base64.urlsafe_b64encode(b'["2025-01-15T12:00:00+00:00"]').decode(),
        base64.urlsafe_b64encode(b'["yesterday", "id"]').decode(),
        base64.urlsafe_b64encode(b'["2025-01-15T12:00:00", "id"]').decode(),  # naive
        base64.urlsafe_b64encode(b'["2025-01-15T12:00:00+00:00", 7]').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "A" * 10_000,
    ],
)
async def test_malformed_cursor_raises_value_error(store: SQLStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="malformed cursor"):
        await request_log_page(store, limit=10, cursor=cursor)


async def test_limit_must_be_positive(store: SQLStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await request_log_page(store, limit=0, cursor=None)
