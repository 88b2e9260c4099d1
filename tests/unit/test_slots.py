"""The connection pool's slots (``engine/providers/http1.py``): at most N holders, the rest served in the
order they came, and no slot lost when a waiter gives up — on time out or cancellation, even as it is
handed one."""

from __future__ import annotations

import asyncio

import pytest

from tokenhub.engine.providers.http1 import Slots


async def test_free_slots_are_taken_at_once_and_the_rest_wait_in_order() -> None:
    slots = Slots(2)
    assert slots.take_free() and slots.take_free() and not slots.take_free()
    served: list[str] = []

    async def wait(name: str) -> None:
        await slots.wait(5)
        served.append(name)

    first, second = asyncio.ensure_future(wait("first")), asyncio.ensure_future(wait("second"))
    await asyncio.sleep(0)
    slots.give_back()
    await first
    assert served == ["first"] and not second.done()
    assert not slots.take_free()  # someone waits: a newcomer does not jump the line
    slots.give_back()
    await second
    slots.give_back()
    slots.give_back()
    assert slots.take_free() and slots.take_free() and not slots.take_free()


async def test_a_waiter_that_times_out_leaves_no_slot_behind() -> None:
    slots = Slots(1)
    assert slots.take_free()
    with pytest.raises(TimeoutError):
        await slots.wait(0.01)
    slots.give_back()
    assert slots.take_free() and not slots.take_free()


async def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    slots = Slots(1)
    assert slots.take_free()
    leaving = asyncio.ensure_future(slots.wait(5))
    staying = asyncio.ensure_future(slots.wait(5))
    await asyncio.sleep(0)
    slots.give_back()  # to `leaving`, which is cancelled before it runs again
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.wait_for(staying, 5)  # the slot went on to the next in line
    assert not slots.take_free()
