"""The Temporal breaker, on a fake clock: no test here sleeps."""

from __future__ import annotations

from tokenhub.temporal_integration.breaker import Breaker, BreakerState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[tuple[BreakerState, BreakerState]] | None = None) -> Breaker:
    return Breaker(
        threshold=3,
        cooldown_s=10.0,
        clock=clock,
        on_change=None if changes is None else lambda old, new: changes.append((old, new)),
    )


def state(b: Breaker) -> BreakerState:
    """Read afresh each time (mypy would otherwise pin the property to its first-seen value)."""
    return b.state


def test_consecutive_faults_open_it() -> None:
    b = breaker(Clock())
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert state(b) == "closed" and b.allow()
    b.record_failure()
    assert state(b) == "open" and not b.allow()


def test_a_success_resets_the_count() -> None:
    b = breaker(Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert state(b) == "closed"


def test_after_the_cooldown_exactly_one_probe_goes_through() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.now += 9.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow()  # the probe
    assert state(b) == "half_open"
    assert not b.allow() and not b.allow()  # everyone else still goes direct


def test_a_good_probe_closes_it_and_a_bad_one_reopens_it() -> None:
    clock = Clock()
    changes: list[tuple[BreakerState, BreakerState]] = []
    b = breaker(clock, changes)
    for _ in range(3):
        b.record_failure()
    clock.now += 11
    assert b.allow()
    b.record_failure()
    assert state(b) == "open" and not b.allow()
    clock.now += 11
    assert b.allow()
    b.record_success()
    assert state(b) == "closed" and b.allow()
    assert changes == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_a_probe_abandoned_by_its_request_frees_the_slot() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.now += 11
    assert b.allow()
    b.release()  # that request was cancelled before it learned anything
    assert b.allow()
