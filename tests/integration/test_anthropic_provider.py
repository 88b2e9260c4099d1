"""The Anthropic adapter against a fake Messages API over real loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.conftest import as_sent
from tests.fakes.anthropic_upstream import (
    FakeAnthropic,
    Reply,
    error_body,
    error_event,
    message,
    message_end,
    message_start,
    text_block,
    text_stream,
    tool_block,
)
from tokenhub.engine.errors import UpstreamError
from tokenhub.engine.providers.anthropic import AnthropicProvider
from tokenhub.engine.providers.base import Chunk, Target
from tokenhub.engine.providers.upstream import UpstreamClient
from tokenhub.engine.streaming import ChunkNormaliser
from tokenhub.engine.types import ChatRequest

TARGET = Target(model_id="our-claude", upstream_model="claude-sonnet-upstream")
TIMEOUT = 5.0


@pytest.fixture
def fake(fake_anthropic: tuple[FakeAnthropic, str]) -> tuple[FakeAnthropic, str]:
    return fake_anthropic


@pytest.fixture
async def provider(fake: tuple[FakeAnthropic, str]) -> AsyncIterator[AnthropicProvider]:
    client = UpstreamClient(
        provider_id="anth",
        base_url=fake[1],
        headers={"anthropic-version": "2023-06-01", "x-api-key": "k"},
        max_connections=10,
        connect_timeout=2.0,
    )
    adapter = AnthropicProvider("anth", client, default_max_tokens=256)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.aclose()


def chat(content: str = "Hi there", **body: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "our-claude", "messages": [{"role": "user", "content": content}], **body}
    )


async def collect(provider: AnthropicProvider, request: ChatRequest) -> list[Chunk]:
    return [chunk async for batch in provider.stream(request, TARGET, TIMEOUT) for chunk in batch]


async def call(provider: AnthropicProvider, request: ChatRequest) -> object:
    if request.stream:
        return await collect(provider, request)
    return await provider.send(request, TARGET, TIMEOUT)


async def failure(provider: AnthropicProvider, request: ChatRequest) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await call(provider, request)
    assert caught.value.provider_id == "anth"
    return caught.value


def text_of(chunks: list[Chunk]) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])


async def test_send_returns_an_openai_completion_and_sends_anthropics_request(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    app.push(Reply(body=message("Hello, human.", message_id="msg_42")))
    request = ChatRequest.model_validate(
        {
            "model": "our-claude",
            "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
            "temperature": 0.2,
            "stop": "###",
        }
    )
    completion = await provider.send(request, TARGET, TIMEOUT)

    assert completion.id == "chatcmpl-msg_42"
    assert completion.model == "our-claude"
    assert completion.choices[0].message.content == "Hello, human."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 6)
    [headers] = app.headers
    assert headers["x-api-key"] == "k"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert app.requests == [
        {
            "model": "claude-sonnet-upstream",
            "max_tokens": 256,
            "system": "Be kind.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "temperature": 0.2,
            "stop_sequences": ["###"],
        }
    ]


async def test_send_translates_tool_use_into_tool_calls(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    tool = {"id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
    app.push(Reply(body=message("I'll check.", tool_uses=[tool], stop_reason="tool_use")))
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    completion = await provider.send(
        chat("Weather in Oslo?", tools=tools, tool_choice="required"), TARGET, TIMEOUT
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check."
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, orjson.loads(call.function.arguments)) == (
        "toolu_1",
        "weather",
        {"city": "Oslo"},
    )
    assert app.requests[0]["tools"] == [{"name": "weather", "input_schema": {"type": "object"}}]
    assert app.requests[0]["tool_choice"] == {"type": "any"}


async def test_stream_yields_text_and_a_final_usage_chunk(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    app.push(Reply(events=text_stream(["Once ", "upon ", "a time."], input_tokens=30, output_tokens=4)))
    chunks = await collect(provider, chat(stream=True))

    assert app.requests[0]["stream"] is True
    assert text_of(chunks) == "Once upon a time."
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}


async def test_streamed_tool_call_arguments_arrive_in_fragments_with_id_and_name_once(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    fragments = ['{"city": ', '"Os', 'lo", "unit"', ': "C"}']
    app.push(
        Reply(
            events=[
                message_start(),
                *tool_block(0, "toolu_7", "weather", fragments),
                *message_end("tool_use"),
            ]
        )
    )
    chunks = await collect(provider, chat(stream=True))

    calls = [call for c in chunks for ch in c["choices"] for call in ch["delta"].get("tool_calls", ())]
    assert {call["index"] for call in calls} == {0}
    assert [call["id"] for call in calls if "id" in call] == ["toolu_7"]
    assert [call["function"]["name"] for call in calls if "name" in call["function"]] == ["weather"]
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert orjson.loads(arguments) == {"city": "Oslo", "unit": "C"}
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["tool_calls"]


async def test_stream_through_the_normaliser_keeps_openai_invariants(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    events = [
        message_start(10, cache_read_input_tokens=90),
        *text_block(0, ["Checking", " now."]),
        *tool_block(1, "toolu_3", "clock", ['{"tz": "UTC"}']),
        *message_end("tool_use", output_tokens=9),
    ]
    app.push(Reply(events=events))
    request = chat(stream=True, stream_options={"include_usage": True})
    normaliser = ChunkNormaliser(model_id="our-claude", include_usage=True, prompt_tokens_estimate=1)
    out: list[Chunk] = []
    async for batch in provider.stream(request, TARGET, TIMEOUT):
        out += as_sent(normalised for chunk in batch for normalised in normaliser.feed(chunk))
    out += normaliser.finish()

    assert len({chunk["id"] for chunk in out}) == 1
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in ch["delta"] for c in out[1:] for ch in c["choices"])
    finishes = [ch["finish_reason"] for c in out for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert text_of(out) == "Checking now."
    assert out[-1]["choices"] == []
    assert out[-1]["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 9,
        "total_tokens": 109,
        "prompt_tokens_details": {"cached_tokens": 90},
    }
    assert all(chunk["usage"] is None for chunk in out[:-1])
    assert normaliser.tokens().input_tokens == 100


async def test_429_is_rate_limited_with_retry_after(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    app.push(
        Reply(
            status=429, body=error_body("rate_limit_error", "Too many requests"), headers={"retry-after": "7"}
        )
    )
    error = await failure(provider, chat())
    assert (error.error_class, error.status, error.retry_after) == ("rate_limited", 429, 7.0)
    assert error.message == "Too many requests"


@pytest.mark.parametrize(
    ("status", "body", "error_class"),
    [
        (529, error_body("overloaded_error", "Overloaded"), "rate_limited"),
        (500, error_body("api_error", "Internal server error"), "transient"),
        (
            400,
            error_body("invalid_request_error", "prompt is too long: 212000 tokens > 200000 maximum"),
            "context_overflow",
        ),
        (401, error_body("authentication_error", "invalid x-api-key"), "fatal"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_error_statuses_are_classified(
    fake: tuple[FakeAnthropic, str],
    provider: AnthropicProvider,
    status: int,
    body: dict[str, Any],
    error_class: str,
    stream: bool,
) -> None:
    app, _ = fake
    app.push(Reply(status=status, body=body))
    error = await failure(provider, chat(stream=stream))
    assert (error.error_class, error.status) == (error_class, status)
    assert error.message == body["error"]["message"]


async def test_an_error_event_mid_stream_raises_after_the_content_so_far(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    events = [message_start(), *text_block(0, ["partial"])[:2], error_event("overloaded_error", "Overloaded")]
    app.push(Reply(events=events))
    received: list[Chunk] = []

    async def drain() -> None:
        async for batch in provider.stream(chat(stream=True), TARGET, TIMEOUT):
            received.extend(batch)

    with pytest.raises(UpstreamError) as caught:
        await drain()
    assert (caught.value.error_class, caught.value.provider_id) == ("rate_limited", "anth")
    assert text_of(received) == "partial"


async def test_a_connection_dropped_mid_stream_is_transient(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    app.push(Reply(events=text_stream(["a", "b", "c", "d"]), drop_after=4))
    error = await failure(provider, chat(stream=True))
    assert error.error_class == "transient"


async def test_a_stream_ending_before_message_stop_is_transient(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    app.push(Reply(events=[message_start(), *text_block(0, ["cut"])]))
    error = await failure(provider, chat(stream=True))
    assert error.error_class == "transient"


async def test_closing_the_stream_early_hangs_up_on_the_upstream(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    app.push(Reply(events=text_stream([f"w{i} " for i in range(200)]), chunk_delay=0.02))
    stream = provider.stream(chat(stream=True), TARGET, TIMEOUT)
    first = await anext(aiter(stream))
    assert [chunk["choices"][0]["delta"]["content"] for chunk in first][-1] == "w0 "
    await stream.aclose()  # type: ignore[attr-defined]
    # Waited for off the loop: the client's socket is closed by this loop's next turns.
    assert await asyncio.to_thread(app.client_disconnected.wait, 5)


async def test_a_request_anthropic_cannot_take_never_reaches_it(
    fake: tuple[FakeAnthropic, str], provider: AnthropicProvider
) -> None:
    app, _ = fake
    error = await failure(provider, chat(n=3))
    assert (error.error_class, error.status) == ("fatal", 400)
    assert app.requests == []
