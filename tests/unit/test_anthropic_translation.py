"""OpenAI <-> Anthropic translation, without sockets: request bodies, answers, and stream events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.fakes.anthropic_upstream import (
    error_event,
    message,
    message_end,
    message_start,
    text_block,
    text_stream,
    tool_block,
)
from tokenhub.engine.errors import UpstreamError
from tokenhub.engine.providers.anthropic import StreamTranslator, to_anthropic_request, to_completion
from tokenhub.engine.providers.base import Chunk
from tokenhub.engine.types import ChatRequest


def translate(stream: bool = False, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    request = ChatRequest.model_validate({"model": "claude", **body})
    return to_anthropic_request(
        request, "claude-upstream", default_max_tokens=1024, stream=stream, provider_id="anth"
    )


def untranslatable(**body: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        translate(**body)
    return caught.value


def run_stream(events: list[Any]) -> tuple[list[Chunk], StreamTranslator]:
    translator = StreamTranslator("our-claude", provider_id="anth")
    chunks: list[Chunk] = []
    for name, data in events:
        chunks += translator.feed(name, data)
    return chunks, translator


def deltas(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [choice["delta"] for chunk in chunks for choice in chunk["choices"]]


def tool_deltas(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [call for delta in deltas(chunks) for call in delta.get("tool_calls", ())]


# --- requests ------------------------------------------------------------------------------------


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    body = translate(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
        ]
    )
    assert body == {
        "model": "claude-upstream",
        "max_tokens": 1024,
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }


@pytest.mark.parametrize(
    ("limits", "expected"),
    [({}, 1024), ({"max_tokens": 50}, 50), ({"max_tokens": 50, "max_completion_tokens": 70}, 70)],
)
def test_max_tokens_is_the_clients_limit_or_the_default(limits: dict[str, Any], expected: int) -> None:
    assert translate(**limits)["max_tokens"] == expected


def test_sampling_stop_user_and_stream_are_carried_over() -> None:
    body = translate(stream=True, temperature=0.3, top_p=0.9, stop="END", user="u-42")
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-42"}
    assert body["stream"] is True
    assert translate(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert "stream" not in translate()


def test_images_become_base64_or_url_image_blocks() -> None:
    parts = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    body = translate(messages=[{"role": "user", "content": parts}])
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.jpg"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ],
)
def test_content_anthropic_cannot_take_is_a_400(part: dict[str, Any]) -> None:
    error = untranslatable(messages=[{"role": "user", "content": [part]}])
    assert (error.error_class, error.status, error.provider_id) == ("fatal", 400, "anth")


def test_tool_calls_and_results_round_trip_with_merged_turns() -> None:
    calls = [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        },
        {"id": "toolu_2", "type": "function", "function": {"name": "clock", "arguments": ""}},
    ]
    body = translate(
        messages=[
            {"role": "user", "content": "Weather and time in Oslo?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "4°C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "09:00"}]},
            {"role": "user", "content": "Thanks, and tomorrow?"},
        ]
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time in Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "4°C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "09:00"},
                {"type": "text", "text": "Thanks, and tomorrow?"},
            ],
        },
    ]


def test_consecutive_same_role_messages_merge_and_empty_text_is_dropped() -> None:
    body = translate(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "three"},
        ]
    )
    texts = [{"type": "text", "text": t} for t in ("one", "two", "three")]
    assert body["messages"] == [{"role": "user", "content": texts}]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_tool_call_arguments_that_are_not_a_json_object_are_a_400(arguments: str) -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    error = untranslatable(
        messages=[{"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": [call]}]
    )
    assert (error.error_class, error.status) == ("fatal", 400)
    assert "toolu_1" in error.message


def test_n_above_one_is_a_400() -> None:
    error = untranslatable(n=2)
    assert (error.error_class, error.status) == ("fatal", 400)


def test_tools_become_input_schemas() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [
        {"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": schema}},
        {"type": "function", "function": {"name": "clock"}},
    ]
    body = translate(tools=tools)
    assert body["tools"] == [
        {"name": "weather", "description": "Weather", "input_schema": schema},
        {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "clock"}}, None, {"type": "tool", "name": "clock"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, True, None),
    ],
)
def test_tool_choice_variants(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    extra: dict[str, Any] = {"tool_choice": choice} if choice is not None else {}
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    body = translate(tools=[{"type": "function", "function": {"name": "clock"}}], **extra)
    assert body.get("tool_choice") == expected


def test_a_tool_choice_naming_no_function_is_a_400() -> None:
    error = untranslatable(
        tools=[{"type": "function", "function": {"name": "clock"}}], tool_choice={"type": "function"}
    )
    assert (error.error_class, error.status) == ("fatal", 400)


# --- answers -------------------------------------------------------------------------------------


def test_a_text_message_becomes_a_chat_completion() -> None:
    completion = to_completion(message("Bonjour", message_id="msg_01"), "our-claude")
    assert completion.id == "chatcmpl-msg_01"
    assert completion.model == "our-claude"
    assert completion.created > 0
    choice = completion.choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (
        "Bonjour",
        None,
        "stop",
    )
    assert completion.usage is not None
    assert completion.usage.model_dump() == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


def test_text_blocks_are_joined_and_thinking_is_dropped() -> None:
    payload = message(None)
    payload["content"] = [
        {"type": "thinking", "thinking": "secret reasoning", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xxx"},
        {"type": "text", "text": "Paris is "},
        {"type": "text", "text": "the capital."},
    ]
    assert to_completion(payload, "m").choices[0].message.content == "Paris is the capital."


def test_tool_use_blocks_become_tool_calls() -> None:
    tool = {"id": "toolu_9", "name": "weather", "input": {"city": "Oslo", "days": 2}}
    completion = to_completion(message(None, tool_uses=[tool], stop_reason="tool_use"), "m")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("toolu_9", "function", "weather")
    assert orjson.loads(call.function.arguments) == {"city": "Oslo", "days": 2}


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    assert to_completion(message("x", stop_reason=stop_reason), "m").choices[0].finish_reason == finish_reason


def test_cached_prompt_tokens_count_as_prompt_tokens() -> None:
    usage = {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}
    completion = to_completion(message("x", usage={**usage, "output_tokens": 7}), "m")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (115, 7)
    assert completion.usage.total_tokens == 122


def test_a_message_without_content_is_a_fatal_error() -> None:
    with pytest.raises(UpstreamError) as caught:
        to_completion({"type": "message", "id": "msg_1"}, "m", provider_id="anth")
    assert (caught.value.error_class, caught.value.provider_id) == ("fatal", "anth")


# --- streams -------------------------------------------------------------------------------------


def test_a_text_stream_becomes_openai_chunks() -> None:
    chunks, translator = run_stream(text_stream(["Hel", "lo", "!"], input_tokens=20, output_tokens=3))
    assert translator.done
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_fakestream"}
    assert {c["model"] for c in chunks} == {"our-claude"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert deltas(chunks)[0] == {"role": "assistant", "content": "Hel"}
    assert "".join(d.get("content", "") for d in deltas(chunks)) == "Hello!"
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}


def test_stream_usage_includes_cached_prompt_tokens() -> None:
    events = [message_start(4, cache_read_input_tokens=30), *text_block(0, ["x"]), *message_end()]
    chunks, _ = run_stream(events)
    assert chunks[-1]["usage"]["prompt_tokens"] == 34


def test_tool_use_blocks_stream_as_indexed_tool_call_deltas() -> None:
    events = [
        message_start(),
        *text_block(0, ["Let me check."]),
        *tool_block(1, "toolu_a", "weather", ['{"ci', 'ty": "Os', 'lo"}']),
        *tool_block(2, "toolu_b", "clock", ["{}"]),
        *message_end("tool_use"),
    ]
    chunks, _ = run_stream(events)
    calls = tool_deltas(chunks)
    starts = [c for c in calls if "id" in c]
    assert starts == [
        {"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "weather", "arguments": ""}},
        {"index": 1, "id": "toolu_b", "type": "function", "function": {"name": "clock", "arguments": ""}},
    ]
    first = "".join(c["function"]["arguments"] for c in calls if c["index"] == 0)
    assert orjson.loads(first) == {"city": "Oslo"}
    assert all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in calls[1:3])
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_tool_called_without_input_gets_empty_object_arguments() -> None:
    chunks, _ = run_stream(
        [message_start(), *tool_block(0, "toolu_a", "clock", []), *message_end("tool_use")]
    )
    calls = tool_deltas(chunks)
    assert deltas(chunks)[0]["role"] == "assistant"
    assert "".join(c["function"]["arguments"] for c in calls) == "{}"


def test_thinking_blocks_are_dropped_from_streams() -> None:
    thinking = [
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hmm"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "s"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ]
    chunks, _ = run_stream([message_start(), *thinking, *text_block(1, ["Answer"]), *message_end()])
    assert deltas(chunks)[0] == {"role": "assistant", "content": "Answer"}
    assert "hmm" not in orjson.dumps(chunks).decode()


def test_a_stream_stopping_without_a_stop_reason_still_finishes_once() -> None:
    events = [message_start(), *text_block(0, ["x"]), ("message_stop", {"type": "message_stop"})]
    chunks, translator = run_stream(events)
    assert translator.done
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"]] == [None, "stop"]


@pytest.mark.parametrize(
    ("error_type", "text", "error_class"),
    [
        ("overloaded_error", "Overloaded", "rate_limited"),
        ("rate_limit_error", "Slow down", "rate_limited"),
        ("api_error", "Internal error", "transient"),
        ("invalid_request_error", "messages: bad", "fatal"),
        ("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", "context_overflow"),
    ],
)
def test_error_events_raise_classified_upstream_errors(error_type: str, text: str, error_class: str) -> None:
    translator = StreamTranslator("m", provider_id="anth")
    translator.feed(*message_start())
    with pytest.raises(UpstreamError) as caught:
        translator.feed(*error_event(error_type, text))
    assert (caught.value.error_class, caught.value.provider_id, caught.value.message) == (
        error_class,
        "anth",
        text,
    )
