"""Any upstream speaking OpenAI's chat-completions API: OpenAI, vLLM, Ollama, Groq, Together…"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson
from pydantic import ValidationError

from tokenhub.engine.errors import UpstreamError
from tokenhub.engine.providers.base import Chunk, ContentChunk, Target, UpstreamChunk
from tokenhub.engine.providers.upstream import SSEEvent, UpstreamClient, classify_status, event_json
from tokenhub.engine.types import ChatCompletion, ChatRequest

PATH = "/v1/chat/completions"
# A JSON string that reads as it is written: no escapes, no control characters (orjson writes such a
# string back byte for byte).
_LITERAL = re.compile(rb'"[^"\\\x00-\x1f]*"')
_CONTENT = b'"content":'


class PlainChunks:
    """A stream's plain content chunks recognised without parsing them.

    Most chunks of a stream differ only in their text: same envelope, one choice, ``delta`` holding only
    ``content``. Once one such chunk has been parsed, it is the template: a later event whose bytes are the
    template's before and after its content string, with a plain string between, parses to the template
    with that string as content, so it is passed on as a ``ContentChunk`` and written out as the template's
    normalised JSON around it. Parsing, normalising and dumping each chunk was ~4 of the ~5 us a token that
    reading, normalising and writing a stream's chunks took on the bench machine."""

    __slots__ = ("_prefix", "_suffix", "_template")

    def __init__(self) -> None:
        self._template: Chunk | None = None
        self._prefix = b""
        self._suffix = b""

    def match(self, data: bytes) -> ContentChunk | None:
        template = self._template
        if template is None or not (data.startswith(self._prefix) and data.endswith(self._suffix)):
            return None
        literal = data[len(self._prefix) : len(data) - len(self._suffix)]
        if _LITERAL.fullmatch(literal) is None:
            return None
        if literal.isascii():
            chars = len(literal) - 2
        else:
            try:
                chars = len(literal.decode()) - 2
            except UnicodeDecodeError:  # parsed, it would have its bad bytes replaced
                return None
        return tuple.__new__(ContentChunk, (template, literal, chars))

    def learn(self, data: bytes, chunk: Chunk) -> None:
        """Take ``chunk``, parsed from ``data``, as the template if it is a plain content chunk."""
        if not _is_plain(chunk) or data.count(b'"content"') != 1:
            return
        start = data.find(_CONTENT)
        if start < 0:
            return
        start += len(_CONTENT)
        while data[start : start + 1] in (b" ", b"\t", b"\n", b"\r"):
            start += 1
        literal = _LITERAL.match(data, start)
        if literal is not None:
            self._template, self._prefix, self._suffix = chunk, data[:start], data[literal.end() :]


def _is_plain(chunk: Chunk) -> bool:
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or isinstance(chunk.get("usage"), dict):
        return False
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") or type(choice.get("index", 0)) is not int:
        return False
    delta = choice.get("delta")
    return type(delta) is dict and delta.keys() == {"content"} and type(delta["content"]) is str


class OpenAICompatProvider:
    def __init__(self, provider_id: str, client: UpstreamClient) -> None:
        self.id = provider_id
        self._client = client

    async def start(self) -> None:
        await self._client.start()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, request: ChatRequest, target: Target, timeout: float) -> ChatCompletion:
        body = orjson.dumps(request.upstream_payload(target.upstream_model))
        async with self._client.post(PATH, body, read_timeout=timeout, total_timeout=timeout) as response:
            raw = await response.read()
        try:
            return ChatCompletion.from_json(raw)
        except ValidationError as exc:
            raise UpstreamError(
                "fatal", f"malformed completion from upstream: {exc.errors()[0]['msg']}", provider_id=self.id
            ) from None

    async def stream(
        self, request: ChatRequest, target: Target, timeout: float
    ) -> AsyncIterator[list[UpstreamChunk]]:
        body = orjson.dumps(request.upstream_payload(target.upstream_model))
        plain = PlainChunks()
        async with self._client.post(PATH, body, read_timeout=timeout, total_timeout=None) as response:
            async for events in response.events():
                chunks: list[UpstreamChunk] = []
                failure: UpstreamError | None = None
                done = False
                for event in events:
                    data = event.data
                    content = plain.match(data)
                    if content is not None:
                        chunks.append(content)
                        continue
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunk = self._chunk(event)
                    except UpstreamError as exc:
                        failure = exc  # after the chunks that came before it
                        break
                    chunks.append(chunk)
                    plain.learn(data, chunk)
                if chunks:
                    yield chunks
                if failure is not None:
                    raise failure
                if done:
                    return

    def _chunk(self, event: SSEEvent) -> Chunk:
        try:
            chunk = event_json(event.data)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                "transient", "upstream sent a chunk that is not JSON", provider_id=self.id
            ) from None
        if not isinstance(chunk, dict):
            raise UpstreamError(
                "transient", "upstream sent a chunk that is not an object", provider_id=self.id
            )
        if "error" in chunk:
            # An in-band error event (vLLM, llama.cpp and others send these mid-stream).
            raise classify_status(_status_of(chunk["error"]), event.data, {}, provider_id=self.id)
        return chunk


def _status_of(error: object) -> int:
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, int) and 400 <= code <= 599:
            return code
    return 500
