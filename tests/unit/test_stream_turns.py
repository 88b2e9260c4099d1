"""Streams in full flow take turns of the event loop, on a fake clock: which work runs in which turn is
asyncio's FIFO order, so these tests count steps, never time."""

from __future__ import annotations

import asyncio
import itertools

from tokenhub.gateway.turns import StreamTurns


class Clock:
    """Each reading is ``step`` later than the one before: every turn seems to take that long."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def flowing(turns: StreamTurns, name: str, log: list[str], batches: int) -> None:
    for _ in range(batches):
        log.append(name)
        await turns.take()


async def newcomer(log: list[str], steps: int) -> None:
    """A request that has just arrived: it needs the loop's next turn for each of its steps."""
    for _ in range(steps):
        log.append("new")
        await asyncio.sleep(0)


def gaps(log: list[str]) -> list[int]:
    """How many stream batches ran between each two steps of the new request."""
    steps = [i for i, entry in enumerate(log) if entry == "new"]
    return [b - a - 1 for a, b in itertools.pairwise(steps)]


async def test_long_turns_let_one_stream_through_every_other_turn_and_new_requests_run_between() -> None:
    turns = StreamTurns(turn_s=0.001, clock=Clock(step=0.01))
    log: list[str] = []
    streams = [asyncio.create_task(flowing(turns, f"s{i}", log, batches=40)) for i in range(8)]
    for _ in range(10):  # the turns have been long for a while
        await asyncio.sleep(0)
    await newcomer(log, steps=7)
    await asyncio.gather(*streams)
    # Letting every stream through each turn (as a bare sleep(0) does) puts all eight between its steps;
    # one a turn put one before each; after a turn that let one through, the next lets none.
    assert gaps(log) == [1, 0, 1, 0, 1, 0]
    assert [log.count(f"s{i}") for i in range(8)] == [40] * 8


async def test_short_turns_let_every_waiting_stream_through() -> None:
    turns = StreamTurns(turn_s=1.0, clock=Clock(step=0.0))
    log: list[str] = []
    streams = [asyncio.create_task(flowing(turns, f"s{i}", log, batches=40)) for i in range(8)]
    for _ in range(10):
        await asyncio.sleep(0)
    await newcomer(log, steps=5)
    await asyncio.gather(*streams)
    assert max(gaps(log)) == 8  # every stream went through in the one turn


async def test_a_stream_cancelled_while_waiting_does_not_hold_up_the_others() -> None:
    turns = StreamTurns(turn_s=0.001, clock=Clock(step=0.01))
    log: list[str] = []
    stuck = asyncio.create_task(flowing(turns, "gone", log, batches=100))
    others = [asyncio.create_task(flowing(turns, f"s{i}", log, batches=4)) for i in range(3)]
    await asyncio.sleep(0)
    stuck.cancel()
    await asyncio.wait_for(asyncio.gather(*others), 5)
    assert log.count("gone") == 1 and all(log.count(f"s{i}") == 4 for i in range(3))
