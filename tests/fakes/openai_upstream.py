"""A fake OpenAI-compatible upstream, spoken over real HTTP: scripted replies, recorded requests.

Each request takes the next scripted ``Reply`` (or the default echo). A reply can be a completion, an SSE
stream, an error status with headers (429 + Retry-After), a slow first token, a connection dropped mid-
stream, or no answer at all. The fake records every request body and whether a streaming client hung up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Send

from tests.fakes.scripted import ScriptedUpstream, send_json


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
        "created": 1_700_000_000,
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


class FakeOpenAI(ScriptedUpstream[Reply]):
    def __init__(self) -> None:
        super().__init__()
        self.default: Reply | None = None

    def default_reply(self) -> Reply:
        return self.default or Reply()

    async def answer(
        self, path: str, request: dict[str, Any], reply: Reply, receive: Receive, send: Send
    ) -> None:
        if path == "/v1/models":
            await send_json(send, 200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            return
        if reply.delay and not await self.wait_unless_hung_up(receive, reply.delay):
            return
        if reply.status != 200 or (reply.chunks is None and not request.get("stream")):
            await send_json(send, reply.status, reply.body or completion(_echo(request)), reply.headers)
            return
        chunks = reply.chunks if reply.chunks is not None else text_chunks(_echo(request).split(" "))
        frames = (c if isinstance(c, bytes) else b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
        await self.stream(
            send,
            receive,
            frames,
            headers=reply.headers,
            ttft=reply.ttft,
            gap=reply.chunk_delay,
            drop_after=reply.drop_after,
            tail=b"data: [DONE]\n\n" if reply.done else b"",
        )


def _echo(request: dict[str, Any]) -> str:
    messages = request.get("messages") or [{}]
    content = messages[-1].get("content")
    text = content if isinstance(content, str) else "parts"
    return f"echo: {text}"
