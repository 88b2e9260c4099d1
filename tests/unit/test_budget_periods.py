"""Budget periods: which calendar period a moment falls in, and when that period began."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokenhub.store.spend import period_of, period_start


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "moment", "period", "began"),
    [
        ("month", "2026-11-30T23:59:59", "2026-11", "2026-11-01T00:00:00"),
        ("month", "2026-12-01T00:00:00", "2026-12", "2026-12-01T00:00:00"),
        (None, "2026-02-14T12:00:00", "2026-02", "2026-02-01T00:00:00"),  # month is the default
        ("day", "2026-11-22T23:59:59", "2026-11-22", "2026-11-22T00:00:00"),
        ("week", "2026-11-22T10:00:00", "2026-W47", "2026-11-16T00:00:00"),  # a Sunday: Monday's week
        ("week", "2026-11-23T00:00:00", "2026-W48", "2026-11-23T00:00:00"),
        # ISO weeks cross the new year: 1 January 2027 is still in 2026's week 53, begun on 28 December.
        ("week", "2027-01-01T08:00:00", "2026-W53", "2026-12-28T00:00:00"),
    ],
)
def test_a_moment_falls_in_one_period_that_began_at_its_start(
    kind: str | None, moment: str, period: str, began: str
) -> None:
    assert period_of(kind, at(moment)) == period
    assert period_start(kind, at(moment)) == at(began)
    # The period's first instant belongs to the same period: spend and its start agree.
    assert period_of(kind, at(began)) == period


def test_a_total_budget_never_resets() -> None:
    assert period_of("total", at("2026-01-01T00:00:00")) == period_of("total", at("2031-06-01T00:00:00"))
    assert period_start("total", at("2026-01-01T00:00:00")) is None
