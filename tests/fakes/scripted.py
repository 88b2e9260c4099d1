"""What every fake upstream shares: a script of replies, a record of requests, and honest HTTP.

A fake is a plain ASGI app served over real loopback HTTP. Each request takes the next scripted reply
(or the fake's default), and the fake notes whether the client hung up while it was still answering.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import orjson
from starlette.types import Receive, Scope, Send

R = TypeVar("R")


class ScriptedUpstream(ABC, Generic[R]):
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: deque[R] = deque()
        self.client_disconnected = threading.Event()
        self._lock = threading.Lock()

    def push(self, *replies: R) -> None:
        with self._lock:
            self.script.extend(replies)

    def default_reply(self) -> R:
        raise NotImplementedError

    async def answer(
        self, path: str, request: dict[str, Any], reply: R, receive: Receive, send: Send
    ) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body) if body else {}
        with self._lock:
            self.requests.append(request)
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            reply = self.script.popleft() if self.script else None
        await self.answer(scope["path"], request, reply or self.default_reply(), receive, send)

    async def wait_unless_hung_up(self, receive: Receive, seconds: float) -> bool:
        """Wait ``seconds``; False (and ``client_disconnected`` set) if the client hangs up first."""
        watcher = asyncio.ensure_future(_hang_up(receive))
        done, _ = await asyncio.wait((watcher,), timeout=seconds)
        watcher.cancel()
        if done:
            self.client_disconnected.set()
        return not done

    async def stream(
        self,
        send: Send,
        receive: Receive,
        frames: Iterable[bytes],
        *,
        headers: dict[str, str],
        ttft: float = 0.0,
        gap: float = 0.0,
        drop_after: int | None = None,
        tail: bytes = b"",
    ) -> None:
        """Send ``frames`` as an SSE body. ``drop_after`` frames, close the connection without ending the
        body (uvicorn closes it when an app returns mid-body): a dropped stream."""
        raw_headers = [(b"content-type", b"text/event-stream"), *_encoded(headers)]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        # uvicorn also reports http.disconnect once the response is over (or once we drop it), so only a
        # hang-up while we are still streaming counts as the client's.
        streaming = True

        async def watch() -> None:
            await _hang_up(receive)
            if streaming:
                self.client_disconnected.set()

        watcher = asyncio.ensure_future(watch())
        try:
            if ttft:
                await asyncio.wait((watcher,), timeout=ttft)
            for i, frame in enumerate(frames):
                if drop_after is not None and i >= drop_after:
                    streaming = False
                    return
                if i and gap:
                    await asyncio.sleep(gap)
                if watcher.done():
                    return
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            streaming = False
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            if streaming and not watcher.done():
                # Give a hang-up that is already on its way a moment to arrive before we stop watching.
                await asyncio.wait((watcher,), timeout=0.05)
            watcher.cancel()


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    payload = orjson.dumps(body)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *_encoded(headers or {}),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def _hang_up(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]
