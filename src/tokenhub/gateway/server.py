"""uvicorn's httptools protocol, with two changes for the gateway's hot path.

- A response's head and the start of its body go out in one write. uvicorn writes the status line and
  headers as soon as the app sends ``http.response.start``, and the body in a second write: two system
  calls and two TCP segments for every JSON answer, where one does. A head is held until the next write
  on the connection, or the end of the event loop's turn if none comes (a HEAD request, a stream whose
  first event is not ready), so it is never delayed past that turn.
- The connection's loss is told to listeners (``scope["extensions"]["tokenhub.connection_lost"]``), so a
  request learns that its client left without a task of its own waiting on ``receive()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# uvicorn's head write: its status line through the blank line, with nothing after it.
_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class HeadWithBody:
    """A transport that holds a response head for the write that follows it; everything else passes."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif data[:9] == _HEAD_START and data[-4:] == _HEAD_END:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ConnectionLost:
    """A client connection's end, for the requests on it that want to stop when it goes."""

    __slots__ = ("_listeners", "happened")

    def __init__(self) -> None:
        self.happened = False
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the connection is lost (ask ``happened`` first: it may already be)."""
        self._listeners.append(callback)

    def ignore(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def set(self) -> None:
        self.happened = True
        listeners, self._listeners = self._listeners, []
        for callback in listeners:
            callback()


CONNECTION_LOST = "tokenhub.connection_lost"


class GatewayProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lost = ConnectionLost()
        held: Any = HeadWithBody(transport, self.loop)
        super().connection_made(held)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: Any = {CONNECTION_LOST: self._lost}  # a server extension of our own, by ASGI's rules
        self.scope["extensions"] = extensions

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost.set()
