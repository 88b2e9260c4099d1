"""The gateway's server protocol: its transport wrapper holds a response head for the write that follows
it, and its connection-lost signal tells a request's listeners once. What reaches the socket is what a
client sees, so the wrapped transport here only records writes (a socket cannot tell one write from two);
tests/e2e/test_probes.py and the disconnect tests in tests/e2e/test_failover.py run real requests."""

from __future__ import annotations

import asyncio
from typing import Any

from tokenhub.gateway.server import ConnectionLost, HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def wrapped() -> tuple[HeadWithBody, Recorder]:
    recorder = Recorder()
    transport: Any = recorder
    return HeadWithBody(transport, asyncio.get_running_loop()), recorder


async def test_a_head_and_its_body_go_out_in_one_write() -> None:
    transport, socket = wrapped()
    transport.write(HEAD)
    assert socket.writes == []
    transport.write(b"{}")
    assert socket.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left to send
    assert socket.writes == [HEAD + b"{}"]


async def test_a_head_with_no_body_after_it_goes_out_at_the_end_of_the_turn() -> None:
    transport, socket = wrapped()
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert socket.writes == [HEAD]
    transport.write(b"data: 1\n\n")  # a stream's later events are not held
    assert socket.writes == [HEAD, b"data: 1\n\n"]


async def test_closing_sends_a_held_head_first() -> None:
    transport, socket = wrapped()
    transport.write(HEAD)
    transport.close()
    assert socket.writes == [HEAD] and socket.closed


async def test_writes_that_are_not_a_head_pass_at_once_and_the_rest_is_the_transports() -> None:
    transport, socket = wrapped()
    complete = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad"  # uvicorn's own whole answers
    transport.write(complete)
    transport.write(b"more")
    assert socket.writes == [complete, b"more"]
    assert transport.is_closing() is False


def test_a_lost_connection_tells_each_listener_once_and_not_those_that_stopped_listening() -> None:
    lost = ConnectionLost()
    heard: list[str] = []
    stays, leaves = (lambda: heard.append("stays")), (lambda: heard.append("leaves"))
    lost.listen(stays)
    lost.listen(leaves)
    lost.ignore(leaves)
    lost.ignore(leaves)  # twice is harmless
    assert not lost.happened
    lost.set()
    lost.set()
    assert lost.happened and heard == ["stays"]
