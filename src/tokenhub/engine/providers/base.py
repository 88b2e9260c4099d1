"""What the engine needs from a provider adapter, and the little every adapter shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

from tokenhub.engine.types import ChatCompletion, ChatRequest

Chunk = dict[str, Any]
"""An OpenAI ``chat.completion.chunk`` object as parsed JSON. Streams stay dicts (a validating model would
cost more than the rest of the hop), or, for most chunks of an OpenAI-compatible stream, ``ContentChunk``."""


class ContentChunk(NamedTuple):
    """A chunk equal to ``template`` but for its one choice's ``delta.content``: ``literal``, the JSON string
    as the upstream sent it (quotes included, no escapes), ``chars`` long. Most of an OpenAI-compatible
    stream reaches the normaliser this way, unparsed (``openai_compat.PlainChunks``)."""

    template: Chunk
    literal: bytes
    chars: int

    def parsed(self) -> Chunk:
        choice = self.template["choices"][0]
        return {**self.template, "choices": [{**choice, "delta": {"content": orjson.loads(self.literal)}}]}


UpstreamChunk = Chunk | ContentChunk
"""What a provider's stream yields."""


@dataclass(frozen=True)
class Target:
    """The model a call is for: our id (what clients see) and the upstream's name for it."""

    model_id: str
    upstream_model: str


class Provider(Protocol):
    """An upstream that can answer chat completions.

    Both methods raise ``UpstreamError`` for every upstream failure. ``timeout`` bounds one call
    (``send``) or the wait for each chunk (``stream``), in seconds.
    """

    id: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def send(self, request: ChatRequest, target: Target, timeout: float) -> ChatCompletion:
        """A completion made for this call alone: the engine sets its ``model`` to the routed model's id."""
        ...

    def stream(
        self, request: ChatRequest, target: Target, timeout: float
    ) -> AsyncIterator[Sequence[UpstreamChunk]]:
        """Yield OpenAI-shaped chunks in batches (those that arrived together; never an empty batch),
        usage included as OpenAI's ``include_usage`` chunk when the upstream reports it. Closing the
        iterator early closes the upstream connection."""
        ...


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (~4 characters a token), used only where an upstream reports none."""
    return (len(text) + 3) // 4
