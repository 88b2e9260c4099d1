"""The OpenAI-compatible adapter's streams against the fake upstream over real loopback HTTP: chunks come
out in batches of those that arrived together, never reordered, never split across a broken frame."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, Reply, text_chunks
from tokenhub.engine.providers.base import Chunk, Target
from tokenhub.engine.providers.openai_compat import OpenAICompatProvider
from tokenhub.engine.providers.upstream import FIRST_BATCH_EVENTS, MAX_BATCH_EVENTS, UpstreamClient
from tokenhub.engine.types import ChatRequest

TARGET = Target(model_id="m", upstream_model="upstream-m")
REQUEST = ChatRequest.model_validate(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
)
WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture
async def provider(fake_openai: tuple[FakeOpenAI, str]) -> AsyncIterator[OpenAICompatProvider]:
    client = UpstreamClient(
        provider_id="p", base_url=fake_openai[1], headers={}, max_connections=4, connect_timeout=2.0
    )
    adapter = OpenAICompatProvider("p", client)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.aclose()


def frame(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def batches(provider: OpenAICompatProvider) -> list[list[Chunk]]:
    return [batch async for batch in provider.stream(REQUEST, TARGET, 5.0)]


def words(received: list[list[Chunk]]) -> list[str]:
    return [c["choices"][0]["delta"].get("content") for batch in received for c in batch if c["choices"]]


async def test_a_burst_comes_out_in_order_in_bounded_batches(
    fake_openai: tuple[FakeOpenAI, str], provider: OpenAICompatProvider
) -> None:
    fake, _ = fake_openai
    fake.push(Reply(chunks=[b"".join(frame(c) for c in text_chunks(WORDS))]))  # one write: 42 events
    received = await batches(provider)
    assert words(received) == ["", *WORDS, None]
    assert 1 <= len(received[0]) <= FIRST_BATCH_EVENTS
    assert all(1 <= len(batch) <= MAX_BATCH_EVENTS for batch in received)


async def test_frames_split_across_writes_are_put_back_together(
    fake_openai: tuple[FakeOpenAI, str], provider: OpenAICompatProvider
) -> None:
    fake, _ = fake_openai
    data = b"".join(frame(c) for c in text_chunks(WORDS[:5]))
    # Cut mid-frame and mid-line, with a pause between the pieces so each is a read of its own.
    pieces = [data[:7], data[7:130], data[130:131], data[131:]]
    fake.push(Reply(chunks=pieces, chunk_delay=0.02))
    assert words(await batches(provider)) == ["", *WORDS[:5], None]


async def test_event_framing_variants_and_bytes_that_are_not_utf8(
    fake_openai: tuple[FakeOpenAI, str], provider: OpenAICompatProvider
) -> None:
    """CRLF line ends, ``data:`` with no space, a comment, an ``event:`` line, and content with a byte
    that is not UTF-8 (it arrives as U+FFFD, as a text decoder makes it, and the stream goes on)."""
    fake, _ = fake_openai
    role, first, second, finish, usage = text_chunks(["caf\u00e9", "two"])
    raw_first = frame(first).replace("caf\u00e9".encode(), b"caf\xc3\xa9 \xff")
    data = (
        b": a comment\r\n"
        + frame(role).replace(b"\n", b"\r\n")
        + b"event: message\n"
        + raw_first
        + frame(second).replace(b"data: ", b"data:")
        + frame(finish)
        + frame(usage)
        + b"data: [DONE]\n\n"
    )
    fake.push(Reply(chunks=[data]))
    assert words(await batches(provider)) == ["", "caf\u00e9 \ufffd", "two", None]
