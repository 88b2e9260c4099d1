"""A fake OpenAI upstream that costs almost nothing, so the benchmark measures the gateway, not the fake.

A bare ``asyncio.Protocol`` on uvloop: keep-alive HTTP/1.1, pre-built response bytes, each non-stream
response in one ``transport.write`` and TCP_NODELAY (two writes without it meet the client's delayed ACK
and cost ~40 ms; see shared/reference/load-testing.md). Requests are handled one at a time per connection.

    python -m bench.upstream --port P [--delay-ms D] [--tokens N] [--gap-ms G]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
from dataclasses import dataclass
from typing import cast

import uvloop

MODEL = "bench-upstream"
CREATED = 1_700_000_000
MAX_HEAD_BYTES = 64 * 1024
DEFAULT_TOKENS = 200
STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type.decode()}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(payload: object) -> bytes:
    return b"data: " + _compact(payload) + b"\n\n"


def _stream_chunk(delta: dict[str, str], finish: str | None) -> bytes:
    return _sse(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


@dataclass(frozen=True)
class Responses:
    """Every byte the server sends, built once at start-up."""

    completion: bytes
    models: bytes
    not_found: bytes
    length_required: bytes
    stream_head: bytes  # status line and headers of a stream
    stream_chunks: tuple[bytes, ...]  # HTTP chunks, one SSE frame each, then the terminating chunk

    @classmethod
    def build(cls, tokens: int) -> Responses:
        usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
        completion = {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        frames = [
            _stream_chunk({"role": "assistant", "content": ""}, None),
            *(_stream_chunk({"content": " tok"}, None) for _ in range(tokens)),
            _stream_chunk({}, "stop"),
            _sse({**completion, "object": "chat.completion.chunk", "choices": [], "usage": usage}),
            b"data: [DONE]\n\n",
        ]
        json_type = b"application/json"
        return cls(
            completion=_response("200 OK", json_type, _compact(completion)),
            models=_response("200 OK", json_type, _compact(models)),
            not_found=_response("404 Not Found", json_type, b'{"error":{"message":"not found"}}'),
            length_required=_response("411 Length Required", json_type, b'{"error":{"message":"length"}}'),
            stream_head=(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            ),
            stream_chunks=(*(_chunk(frame) for frame in frames), b"0\r\n\r\n"),
        )


@dataclass(frozen=True)
class Behaviour:
    responses: Responses
    delay_s: float
    gap_s: float


@dataclass(frozen=True)
class Request:
    method: bytes
    path: bytes
    body: bytes
    close: bool


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False  # a delayed or streamed answer is still being written
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._serve_buffered()

    def _serve_buffered(self) -> None:
        while not self._busy and self._transport is not None:
            request = self._next_request()
            if request is None:
                return
            self._answer(request)

    def _next_request(self) -> Request | None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._close()
            return None
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        method, _, rest = lines[0].partition(b" ")
        path = rest.partition(b" ")[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers:
            # The gateway and aiohttp send Content-Length; a chunked request body is not worth parsing here.
            self._write(self._behaviour.responses.length_required)
            self._close()
            return None
        length = int(headers.get(b"content-length", b"0"))
        if len(self._buffer) < end + 4 + length:
            return None
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        close = headers.get(b"connection", b"").lower() == b"close"
        return Request(method, path.partition(b"?")[0], body, close)

    def _answer(self, request: Request) -> None:
        responses = self._behaviour.responses
        if request.method == b"POST" and request.path == b"/v1/chat/completions":
            stream = STREAM_FLAG.search(request.body) is not None
            if stream or self._behaviour.delay_s > 0:
                self._busy = True
                self._task = asyncio.get_running_loop().create_task(self._answer_later(stream, request.close))
                return
            self._write(responses.completion)
        elif request.method == b"GET" and request.path == b"/v1/models":
            self._write(responses.models)
        else:
            self._write(responses.not_found)
        if request.close:
            self._close()

    async def _answer_later(self, stream: bool, close: bool) -> None:
        behaviour = self._behaviour
        if behaviour.delay_s > 0:
            await asyncio.sleep(behaviour.delay_s)
        if not stream:
            self._write(behaviour.responses.completion)
        elif behaviour.gap_s <= 0:
            self._write(behaviour.responses.stream_head + b"".join(behaviour.responses.stream_chunks))
        else:
            self._write(behaviour.responses.stream_head + behaviour.responses.stream_chunks[0])
            for chunk in behaviour.responses.stream_chunks[1:]:
                await asyncio.sleep(behaviour.gap_s)
                if self._transport is None:
                    return
                self._write(chunk)
        self._busy = False
        if close:
            self._close()
        else:
            self._serve_buffered()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def serve(port: int, behaviour: Behaviour) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(behaviour), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="A near-free fake OpenAI upstream for benchmarks.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before answering")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="content chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause between stream chunks")
    args = parser.parse_args()
    behaviour = Behaviour(Responses.build(args.tokens), args.delay_ms / 1000, args.gap_ms / 1000)
    uvloop.run(serve(args.port, behaviour))


if __name__ == "__main__":
    main()
