"""A fake OpenAI-compatible upstream, spoken over real HTTP: scripted replies, recorded requests.

Each request takes the next scripted ``Reply`` (or the default echo). A reply can be a completion, an SSE
stream, an error status with headers (429 + Retry-After), a slow first token, a connection dropped mid-
stream, or no answer at all. The fake records every request body and whether a streaming client hung up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON body (non-stream or error); None = an echo completion
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[Any] | None = None  # SSE stream: dicts become data lines; bytes are sent raw
    delay: float = 0.0  # before the status line
    ttft: float = 0.0  # streams: after the headers, before the first chunk
    chunk_delay: float = 0.0
    drop_after: int | None = None  # streams: close the connection after this many chunks
    done: bool = True  # streams: end with data: [DONE]


def completion(
    content: str = "Hello from the fake upstream.",
    *,
    model: str = "fake-model",
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content if tool_calls is None else None}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def text_chunks(
    words: list[str], *, model: str = "fake-model", usage: bool = True, finish_reason: str = "stop"
) -> list[Any]:
    """What OpenAI streams for ``words``: a role chunk, content chunks, a finish chunk, a usage chunk."""
    base = {
        "id": "chatcmpl-fakestream",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    chunks: list[Any] = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    chunks += [
        {**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]})
    if usage:
        chunks.append(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": 9,
                    "completion_tokens": len(words),
                    "total_tokens": 9 + len(words),
                },
            }
        )
    return chunks


def error_body(message: str, *, type_: str = "server_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: deque[Reply] = deque()
        self.default: Reply | None = None
        self.client_disconnected = threading.Event()
        self._lock = threading.Lock()

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def _next(self) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        return self.default or Reply()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v1/models":
            await _send_json(send, 200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            return
        request = orjson.loads(body) if body else {}
        with self._lock:
            self.requests.append(request)
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        reply = self._next()
        if reply.delay and not await self._sleep_unless_hung_up(reply.delay, receive):
            return
        if reply.status != 200 or (reply.chunks is None and not request.get("stream")):
            await _send_json(send, reply.status, reply.body or completion(_echo(request)), reply.headers)
            return
        chunks = reply.chunks if reply.chunks is not None else text_chunks(_echo(request).split(" "))
        await self._stream(reply, chunks, receive, send)

    async def _sleep_unless_hung_up(self, seconds: float, receive: Receive) -> bool:
        """Wait ``seconds``; False (and ``client_disconnected`` set) if the client hangs up first."""

        async def hang_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(hang_up())
        done, _ = await asyncio.wait((watcher,), timeout=seconds)
        watcher.cancel()
        if done:
            self.client_disconnected.set()
            return False
        return True

    async def _stream(self, reply: Reply, chunks: list[Any], receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream"),
            *((k.encode(), v.encode()) for k, v in reply.headers.items()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        # uvicorn also reports http.disconnect once the response is over (or once we drop it), so only
        # a hang-up while we are still streaming counts as the client's.
        streaming = True

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if streaming:
                self.client_disconnected.set()

        watcher = asyncio.ensure_future(watch())
        try:
            if reply.ttft:
                await asyncio.wait((watcher,), timeout=reply.ttft)
            for i, chunk in enumerate(chunks):
                if reply.drop_after is not None and i >= reply.drop_after:
                    streaming = False
                    return  # returning mid-body makes uvicorn close the connection: a dropped stream
                if i and reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                if watcher.done():
                    return
                data = chunk if isinstance(chunk, bytes) else b"data: " + orjson.dumps(chunk) + b"\n\n"
                await send({"type": "http.response.body", "body": data, "more_body": True})
            tail = b"data: [DONE]\n\n" if reply.done else b""
            streaming = False
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            if streaming and not watcher.done():
                # Give a hang-up that is already on its way a moment to arrive before we stop watching.
                await asyncio.wait((watcher,), timeout=0.05)
            watcher.cancel()


def _echo(request: dict[str, Any]) -> str:
    messages = request.get("messages") or [{}]
    content = messages[-1].get("content")
    text = content if isinstance(content, str) else "parts"
    return f"echo: {text}"


async def _send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    payload = orjson.dumps(body)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
