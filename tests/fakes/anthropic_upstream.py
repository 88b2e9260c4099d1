"""A fake Anthropic Messages API, spoken over real HTTP: scripted replies, recorded requests.

Each ``POST /v1/messages`` takes the next scripted ``Reply`` (or the default echo). A reply can be a
message, a stream of Anthropic's named SSE events, an error status with headers (429 + retry-after), a
connection dropped mid-stream, or a slow stream. The fake records every request body and its headers,
and whether a streaming client hung up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Send

from tests.fakes.scripted import ScriptedUpstream, send_json

Event = tuple[str, dict[str, Any]]


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON body (non-stream or error); None = an echo message
    headers: dict[str, str] = field(default_factory=dict)
    events: Sequence[Event | bytes] | None = None  # SSE stream: (name, data) pairs; bytes are sent raw
    chunk_delay: float = 0.0
    drop_after: int | None = None  # streams: close the connection after this many events


def message(
    text: str | None = "Hello from the fake Anthropic.",
    *,
    tool_uses: list[dict[str, Any]] | None = None,
    stop_reason: str = "end_turn",
    usage: dict[str, int] | None = None,
    message_id: str = "msg_fake",
) -> dict[str, Any]:
    """A Messages API ``message``: a text block (unless ``text`` is None), then ``tool_uses`` blocks."""
    content: list[dict[str, Any]] = [] if text is None else [{"type": "text", "text": text}]
    content += [{"type": "tool_use", **tool} for tool in tool_uses or ()]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 12, "output_tokens": 6},
    }


def message_start(input_tokens: int = 12, *, message_id: str = "msg_fakestream", **usage: int) -> Event:
    body = {**message(None, message_id=message_id), "stop_reason": None}
    body["usage"] = {"input_tokens": input_tokens, "output_tokens": 1, **usage}
    return "message_start", {"type": "message_start", "message": body}


def text_block(index: int, pieces: list[str]) -> list[Event]:
    """A text content block streamed as ``pieces``."""
    start = {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
    deltas: list[Event] = [
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        for delta in ({"type": "text_delta", "text": piece} for piece in pieces)
    ]
    stop = {"type": "content_block_stop", "index": index}
    return [("content_block_start", start), *deltas, ("content_block_stop", stop)]


def tool_block(index: int, tool_id: str, name: str, fragments: list[str]) -> list[Event]:
    """A tool_use content block whose input JSON arrives as ``fragments``."""
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    start = {"type": "content_block_start", "index": index, "content_block": block}
    deltas: list[Event] = [
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        for delta in ({"type": "input_json_delta", "partial_json": piece} for piece in fragments)
    ]
    stop = {"type": "content_block_stop", "index": index}
    return [("content_block_start", start), *deltas, ("content_block_stop", stop)]


def message_end(stop_reason: str = "end_turn", output_tokens: int = 5) -> list[Event]:
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    return [("message_delta", delta), ("message_stop", {"type": "message_stop"})]


def text_stream(pieces: list[str], *, input_tokens: int = 12, output_tokens: int = 5) -> list[Event | bytes]:
    """What Anthropic streams for a plain text answer of ``pieces``, a ping included."""
    return [
        message_start(input_tokens),
        ("ping", {"type": "ping"}),
        *text_block(0, pieces),
        *message_end("end_turn", output_tokens),
    ]


def error_event(error_type: str, text: str) -> Event:
    return "error", {"type": "error", "error": {"type": error_type, "message": text}}


def error_body(error_type: str, text: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": text}}


class FakeAnthropic(ScriptedUpstream[Reply]):
    def default_reply(self) -> Reply:
        return Reply()

    async def answer(
        self, path: str, request: dict[str, Any], reply: Reply, receive: Receive, send: Send
    ) -> None:
        if path != "/v1/messages":
            await send_json(send, 404, error_body("not_found_error", f"no route {path}"))
            return
        if reply.status != 200 or (reply.events is None and not request.get("stream")):
            await send_json(send, reply.status, reply.body or message(_echo(request)), reply.headers)
            return
        events = reply.events if reply.events is not None else text_stream(_echo(request).split(" "))
        await self.stream(
            send,
            receive,
            (_sse(e) for e in events),
            headers=reply.headers,
            gap=reply.chunk_delay,
            drop_after=reply.drop_after,
        )


def _sse(event: Event | bytes) -> bytes:
    if isinstance(event, bytes):
        return event
    name, data = event
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _echo(request: dict[str, Any]) -> str:
    messages = request.get("messages") or [{}]
    content = messages[-1].get("content")
    if isinstance(content, list):
        content = " ".join(block.get("text", "") for block in content if block.get("type") == "text")
    return f"echo: {content}"
