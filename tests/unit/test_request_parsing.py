"""Request bodies: what parses (and passes through untouched), and the 400 every bad body gets."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from tokenhub.engine import ChatRequest, InvalidRequest
from tokenhub.gateway.parsing import parse_chat_request

FULL_REQUEST: dict[str, Any] = {
    "model": "demo-large",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather in Oslo?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 4}'},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
        }
    ],
    "tool_choice": "auto",
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    },
    "temperature": 0.2,
    "max_completion_tokens": 300,
    "stream": True,
    "stream_options": {"include_usage": False},
    "logit_bias": {"50256": -100},
    "metadata": {"team": "search"},
}


def parse(body: dict[str, Any] | bytes) -> ChatRequest:
    return parse_chat_request(body if isinstance(body, bytes) else orjson.dumps(body))


def rejection(body: dict[str, Any] | list[Any] | bytes) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    return info.value


def assert_readable(error: InvalidRequest) -> None:
    message = error.message
    assert message
    assert "http" not in message  # no pydantic documentation links
    assert "pydantic" not in message.lower()
    assert "Value error," not in message
    assert "validation error" not in message.lower()
    assert "\n" not in message


def user(content: Any = "hi") -> dict[str, Any]:
    return {"role": "user", "content": content}


# --- what parses -----------------------------------------------------------------------------------


def test_a_full_request_parses_with_its_typed_fields() -> None:
    request = parse(FULL_REQUEST)

    assert request.model == "demo-large"
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[1].text() == "What is in this picture, and the weather in Oslo?"
    tool_calls = request.messages[2].tool_calls
    assert tool_calls is not None
    assert tool_calls[0].function.name == "get_weather"
    assert request.messages[3].tool_call_id == "call_1"
    assert request.tools is not None
    assert request.tools[0].function.name == "get_weather"
    assert request.response_format is not None
    assert request.response_format.type == "json_schema"
    assert request.stream is True
    assert request.include_usage is False
    assert request.output_limit == 300


def test_a_minimal_request_needs_only_messages() -> None:
    request = parse({"messages": [user()]})

    assert (request.model, request.stream, request.include_usage, request.output_limit) == (
        "",
        False,
        False,
        None,
    )


def test_output_limit_prefers_max_completion_tokens_over_max_tokens() -> None:
    assert parse({"messages": [user()], "max_tokens": 50}).output_limit == 50
    assert parse({"messages": [user()], "max_tokens": 50, "max_completion_tokens": 70}).output_limit == 70


def test_an_integer_temperature_is_accepted() -> None:
    assert parse({"messages": [user()], "temperature": 1}).temperature == 1


def test_the_upstream_payload_is_what_the_client_sent_with_the_upstream_model_name() -> None:
    body = copy.deepcopy(FULL_REQUEST)
    body["stream"] = False
    body.pop("stream_options")

    payload = parse(body).upstream_payload("meta-llama/Llama-3.3-70B")

    assert payload == {**body, "model": "meta-llama/Llama-3.3-70B"}


def test_the_upstream_payload_does_not_add_fields_the_client_left_out() -> None:
    payload = parse({"messages": [user()]}).upstream_payload("up")

    assert payload == {"model": "up", "messages": [{"role": "user", "content": "hi"}]}


def test_the_upstream_payload_forces_include_usage_on_streams_and_keeps_other_stream_options() -> None:
    body = {**FULL_REQUEST, "stream_options": {"include_usage": False, "chunk_hint": 3}}
    request = parse(body)

    payload = request.upstream_payload("up")

    assert payload["stream_options"] == {"include_usage": True, "chunk_hint": 3}
    assert request.include_usage is False  # what the client asked for is still what it gets
    assert {k: v for k, v in payload.items() if k not in ("model", "stream_options")} == {
        k: v for k, v in body.items() if k not in ("model", "stream_options")
    }


def test_the_upstream_payload_adds_stream_options_to_a_stream_that_had_none() -> None:
    payload = parse({"messages": [user()], "stream": True}).upstream_payload("up")

    assert payload["stream_options"] == {"include_usage": True}


def test_a_non_streaming_payload_gets_no_stream_options() -> None:
    assert "stream_options" not in parse({"messages": [user()]}).upstream_payload("up")


def test_a_changed_copy_sends_its_change_and_the_original_still_sends_what_the_client_sent() -> None:
    """The payload is the client's own JSON object when nothing changed; a copy with a change (a budget's
    cap on output, directives taken out of messages) must send the change."""
    body = {**FULL_REQUEST, "stream": False, "max_tokens": 4000}
    body.pop("stream_options")
    original = parse(body)

    capped = original.model_copy(update={"max_tokens": 499})

    assert capped.upstream_payload("up") == {**body, "model": "up", "max_tokens": 499}
    assert original.upstream_payload("up") == {**body, "model": "up"}
    assert body["model"] == "demo-large"  # the payload is a new object, not the client's changed


# --- what is refused -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"{bad", b'{"messages": [', b"\xff\xfe"], ids=["syntax", "truncated", "binary"]
)
def test_a_body_that_is_not_json_is_refused(body: bytes) -> None:
    error = rejection(body)

    assert_readable(error)
    assert error.param is None
    assert error.code == "invalid_json"
    assert "not valid JSON" in error.message


@pytest.mark.parametrize("body", [b"", b"  \n\t"], ids=["empty", "whitespace"])
def test_an_empty_body_is_refused(body: bytes) -> None:
    error = rejection(body)

    assert_readable(error)
    assert error.code == "invalid_json"
    assert "empty" in error.message


@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b'"hello"', b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_refused(body: bytes) -> None:
    error = rejection(body)

    assert_readable(error)
    assert error.param is None
    assert "JSON object" in error.message


def test_missing_messages_is_a_missing_parameter() -> None:
    error = rejection({"model": "m"})

    assert_readable(error)
    assert (error.param, error.code) == ("messages", "missing_required_parameter")
    assert "'messages'" in error.message


def test_empty_messages_is_refused() -> None:
    error = rejection({"messages": []})

    assert_readable(error)
    assert error.param == "messages"
    assert "at least one message" in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [user()], "temperature": "0.5"}, "temperature"),
        ({"messages": [user()], "temperature": 2.5}, "temperature"),
        ({"messages": [user()], "stream": "yes"}, "stream"),
        ({"messages": [user()], "max_tokens": 0}, "max_tokens"),
        ({"messages": [user()], "n": "2"}, "n"),
        ({"messages": [user(), user(5)]}, "messages[1].content"),
        ({"messages": [{"role": "robot", "content": "beep"}]}, "messages[0].role"),
        ({"messages": [user(), "hello"]}, "messages[1]"),
        ({"messages": [user()], "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"messages": [user()], "response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"messages": [user()], "tools": [{"type": "function", "function": {"name": ""}}]},
            "tools[0].function.name",
        ),
    ],
    ids=[
        "temperature-string",
        "temperature-too-high",
        "stream-yes",
        "max-tokens-zero",
        "n-string",
        "content-number",
        "unknown-role",
        "message-not-object",
        "include-usage-string",
        "response-format-type",
        "tool-name-empty",
    ],
)
def test_a_wrong_value_names_the_field_in_openai_style(body: dict[str, Any], param: str) -> None:
    error = rejection(body)

    assert_readable(error)
    assert error.param == param
    assert error.code == "invalid_value"
    assert f"'{param}'" in error.message


def test_a_tool_message_without_tool_call_id_names_that_field() -> None:
    error = rejection({"messages": [user(), {"role": "tool", "content": "42"}]})

    assert_readable(error)
    assert "tool_call_id" in error.message
    assert error.param == "messages[1].tool_call_id"


def test_a_user_message_without_content_names_that_field() -> None:
    error = rejection({"messages": [{"role": "user"}]})

    assert_readable(error)
    assert "content" in error.message
    assert error.param == "messages[0].content"


def test_a_text_content_part_without_text_names_the_part_not_the_string_branch() -> None:
    error = rejection({"messages": [user([{"type": "text"}])]})

    assert_readable(error)
    # The client sent a list of parts; telling it "should be a valid string" points it the wrong way.
    assert "valid string" not in error.message
    assert error.param is not None
    assert error.param.startswith("messages[0].content[0]")
