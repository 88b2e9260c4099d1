"""Budget spend on real databases: a period's reservations and spend are its own; the next starts fresh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.databases import BACKENDS, open_store
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
