"""Any upstream speaking OpenAI's chat-completions API: OpenAI, vLLM, Ollama, Groq, Together…"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from pydantic import ValidationError

from tokenhub.engine.errors import UpstreamError
from tokenhub.engine.providers.base import Chunk, Target
from tokenhub.engine.providers.upstream import SSEEvent, UpstreamClient, classify_status, event_json
from tokenhub.engine.types import ChatCompletion, ChatRequest

PATH = "/v1/chat/completions"


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
    ) -> AsyncIterator[list[Chunk]]:
        body = orjson.dumps(request.upstream_payload(target.upstream_model))
        async with self._client.post(PATH, body, read_timeout=timeout, total_timeout=None) as response:
            async for events in response.events():
                chunks: list[Chunk] = []
                failure: UpstreamError | None = None
                done = False
                for event in events:
                    if event.data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunks.append(self._chunk(event))
                    except UpstreamError as exc:
                        failure = exc  # after the chunks that came before it
                        break
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
