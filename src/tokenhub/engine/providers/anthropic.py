"""Anthropic's Messages API, translated to and from OpenAI's chat completions (placeholder, see below)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tokenhub.engine.errors import UpstreamError
from tokenhub.engine.providers.base import Chunk, Target
from tokenhub.engine.providers.upstream import UpstreamClient
from tokenhub.engine.types import ChatCompletion, ChatRequest


class AnthropicProvider:
    def __init__(self, provider_id: str, client: UpstreamClient, *, default_max_tokens: int) -> None:
        self.id = provider_id
        self._client = client
        self._default_max_tokens = default_max_tokens

    async def start(self) -> None:
        await self._client.start()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, request: ChatRequest, target: Target, timeout: float) -> ChatCompletion:
        raise UpstreamError("fatal", "anthropic adapter not written yet", provider_id=self.id)

    async def stream(self, request: ChatRequest, target: Target, timeout: float) -> AsyncIterator[Chunk]:
        raise UpstreamError("fatal", "anthropic adapter not written yet", provider_id=self.id)
        yield {}
