"""The OpenAI-compatible adapter's streams against the fake upstream over real loopback HTTP: chunks come
out in batches of those that arrived together, never reordered, never split across a broken frame."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.conftest import parsed
from tests.fakes.openai_upstream import FakeOpenAI, Reply, text_chunks
from tokenhub.engine.providers.base import Chunk, ContentChunk, Target
from tokenhub.engine.providers.openai_compat import OpenAICompatProvider
from tokenhub.engine.providers.upstream import FIRST_BATCH_EVENTS, MAX_BATCH_EVENTS, UpstreamClient
from tokenhub.engine.streaming import ChunkNormaliser
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
    return [parsed(batch) async for batch in provider.stream(REQUEST, TARGET, 5.0)]


def words(received: list[list[Chunk]]) -> list[str]:
    return [c["choices"][0]["delta"].get("content") for batch in received for c in batch if c["choices"]]


async def test_a_burst_comes_out_in_order_in_bounded_batches(
    fake_openai: tuple[FakeOpenAI, str], provider: OpenAICompatProvider
) -> None:
    fake, _ = fake_openai
    many = WORDS * 4  # one write of 163 events: more than the first batch and a full one after it
    fake.push(Reply(chunks=[b"".join(frame(c) for c in text_chunks(many))]))
    received = await batches(provider)
    assert words(received) == ["", *many, None]
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


async def test_crlf_frames_split_inside_their_line_ends_are_put_back_together(
    fake_openai: tuple[FakeOpenAI, str], provider: OpenAICompatProvider
) -> None:
    fake, _ = fake_openai
    data = b"".join(frame(c).replace(b"\n", b"\r\n") for c in text_chunks(WORDS[:3]))
    first_end = data.index(b"\r\n\r\n")
    second_end = data.index(b"\r\n\r\n", first_end + 4)
    # Cut between a CR and its LF, and between the two line ends of a blank line.
    cuts = [first_end + 1, first_end + 3, second_end + 2, len(data) - 1]
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]
    fake.push(Reply(chunks=pieces, chunk_delay=0.02))
    assert words(await batches(provider)) == ["", *WORDS[:3], None]


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


def plain(content: str, *, index: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "upstream-m",
        "choices": [{"index": index, "delta": {"content": content}, "finish_reason": None, **extra}],
    }


def start(index: int = 0) -> dict[str, Any]:
    chunk = plain("", index=index)
    chunk["choices"][0]["delta"]["role"] = "assistant"
    return chunk


def finish(index: int = 0) -> dict[str, Any]:
    chunk = plain("", index=index)
    chunk["choices"][0].update(delta={}, finish_reason="stop")
    return chunk


TEXTS = [
    "Hello",
    " w\u00f6rld",
    " \U0001f600",
    "",
    " a/b",
    " \u2028",
    ' say "content"',
    " back\\slash",
    " line\n",
]
STREAMS = {
    "plain": [start(), *(plain(t) for t in TEXTS), finish()],
    "logprobs and fingerprint": [
        {**start(), "system_fingerprint": "fp_1", "service_tier": "default"},
        *({**plain(t, logprobs=None), "system_fingerprint": "fp_1", "usage": None} for t in TEXTS),
        finish(),
        {
            **plain(""),
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
        },
    ],
    "two choices": [
        start(0),
        start(1),
        *(plain(t, index=i) for t in TEXTS for i in (0, 1)),
        finish(0),
        finish(1),
    ],
    "text after the finish": [start(), plain("one"), plain("two"), finish(), plain("late"), plain("later")],
    "an envelope that changes": [start(), plain("a"), {**plain("b"), "id": "other"}, plain("c"), finish()],
}


def pretty(chunk: dict[str, Any]) -> bytes:
    """The JSON as some servers write it: a space after every colon and comma."""
    return b"data: " + orjson.dumps(chunk).replace(b'":', b'": ').replace(b",", b", ") + b"\n\n"


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("style", ["compact", "pretty"])
@pytest.mark.parametrize("name", list(STREAMS))
async def test_chunks_passed_on_unparsed_are_sent_as_the_parsed_ones_would_be(
    fake_openai: tuple[FakeOpenAI, str],
    provider: OpenAICompatProvider,
    name: str,
    style: str,
    include_usage: bool,
) -> None:
    """What the client receives, byte for byte, whether a chunk was parsed or passed on as its template
    and text (``PlainChunks``): against the same events each parsed and normalised as a dict."""
    fake, _ = fake_openai
    data = b"".join(frame(c) if style == "compact" else pretty(c) for c in STREAMS[name])
    fake.push(Reply(chunks=[data]))
    received = [chunk async for batch in provider.stream(REQUEST, TARGET, 5.0) for chunk in batch]

    def normaliser() -> ChunkNormaliser:
        return ChunkNormaliser(model_id="m", include_usage=include_usage, prompt_tokens_estimate=2)

    fast, slow = normaliser(), normaliser()
    fast_out = [c if isinstance(c, bytes) else orjson.dumps(c) for c in fast.feed_all(received)]
    parsed_each = [orjson.loads(event[len(b"data: ") :]) for event in data.split(b"\n\n")[:-1]]
    slow_out = [orjson.dumps(c) for c in slow.feed_all(parsed_each)]
    assert fast_out == slow_out
    assert fast.finish() == slow.finish()
    assert fast.tokens() == slow.tokens()
    if name == "plain":  # every text after the first, but the three with escapes, went unparsed
        assert sum(isinstance(c, ContentChunk) for c in received) == len(TEXTS) - 1 - 3
