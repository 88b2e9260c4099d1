"""An OpenAI client talking to Claude through the gateway never sees Anthropic's shapes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.anthropic_upstream import (
    FakeAnthropic,
    Reply,
    error_body,
    message,
    message_end,
    message_start,
    text_block,
    text_stream,
    tool_block,
)
from tests.fakes.openai_upstream import FakeOpenAI

CATALOG = """
providers:
  - {{id: claude, type: anthropic, base_url: "{anthropic}", api_key_env: TEST_ANTHROPIC_KEY}}
  - {{id: backup, type: openai, base_url: "{openai}"}}
models:
  - {{id: claude-test, provider_id: claude, upstream_model: claude-upstream, weight: 9,
      max_context_tokens: 200000, input_per_1k: 0.003, output_per_1k: 0.015}}
  - {{id: backup-model, provider_id: backup, weight: 3, max_context_tokens: 8000}}
"""
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def claude(
    fake_anthropic: tuple[FakeAnthropic, str],
    fake_openai: tuple[FakeOpenAI, str],
    start_gateway: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[FakeAnthropic, FakeOpenAI, Any, openai.OpenAI]:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    fake, anthropic_url = fake_anthropic
    backup, openai_url = fake_openai
    gateway = start_gateway(CATALOG.format(anthropic=anthropic_url, openai=openai_url))
    client = sdk_client(gateway.v1, timeout=20)
    return fake, backup, gateway, client


def test_non_stream_with_a_system_prompt(claude: Any) -> None:
    fake, _, _, client = claude
    fake.push(Reply(body=message("Bonjour!", usage={"input_tokens": 20, "output_tokens": 3})))
    result = client.chat.completions.create(
        model="claude-test",
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
        max_tokens=50,
        temperature=1.5,
    )
    assert result.choices[0].message.content == "Bonjour!"
    assert result.choices[0].finish_reason == "stop"
    assert result.model == "claude-test" and result.object == "chat.completion"
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.completion_tokens) == (
        20,
        3,
    )
    sent = fake.requests[0]
    assert sent["model"] == "claude-upstream" and sent["system"] == "Answer in French."
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 1.0
    assert fake.headers[0]["x-api-key"] == "sk-ant-test" and fake.headers[0]["anthropic-version"]


def test_tool_use_round_trip(claude: Any) -> None:
    fake, _, _, client = claude
    tool = {"id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    fake.push(Reply(body=message(None, tool_uses=[tool], stop_reason="tool_use")))
    first = client.chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.id == "toolu_1" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert fake.requests[0]["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]

    fake.push(Reply(body=message("Sunny.")))
    client.chat.completions.create(
        model="claude-test",
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        ],
    )
    turns = fake.requests[1]["messages"]
    assert turns[1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}],
    }
    assert turns[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
    }


def test_stream_is_openai_chunks_with_usage(claude: Any) -> None:
    fake, _, gateway, client = claude
    fake.push(Reply(events=text_stream(["Hel", "lo"], input_tokens=30, output_tokens=2)))
    chunks = list(
        client.chat.completions.create(
            model="claude-test",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (30, 2)
    with httpx.stream(
        "POST",
        f"{gateway.v1}/chat/completions",
        timeout=10,
        json={"model": "claude-test", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as response:
        body = response.read().decode()
    assert "event:" not in body and "content_block" not in body and body.endswith("data: [DONE]\n\n")
    gateway.stop()
    rows = gateway.request_logs()
    assert rows[0]["input_tokens"] == 30 and rows[0]["output_tokens"] == 2
    assert rows[0]["cost_usd"] == pytest.approx(30 / 1000 * 0.003 + 2 / 1000 * 0.015)


def test_streamed_tool_call(claude: Any) -> None:
    fake, _, _, client = claude
    events = [
        message_start(),
        *text_block(0, ["Let me check."]),
        *tool_block(1, "toolu_9", "get_weather", ['{"ci', 'ty": "Ri', 'ga"}']),
        *message_end("tool_use"),
    ]
    fake.push(Reply(events=events))
    chunks = list(
        client.chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, stream=True
        )
    )
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == "toolu_9" and deltas[0].function.name == "get_weather"
    assert all(d.id is None for d in deltas[1:]) and {d.index for d in deltas} == {0}
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Riga"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_overloaded_claude_fails_over(claude: Any) -> None:
    fake, backup, _, client = claude
    fake.push(
        Reply(status=529, body=error_body("overloaded_error", "Overloaded"), headers={"retry-after": "2"})
    )
    result = client.chat.completions.create(model="claude-test", messages=[{"role": "user", "content": "Hi"}])
    assert result.model == "backup-model"
    assert len(backup.requests) == 1
