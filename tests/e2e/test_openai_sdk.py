"""The official ``openai`` package against a real gateway over loopback, upstream a real fake server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.openai_upstream import FakeOpenAI, Reply, completion, error_body, text_chunks

CATALOG = """
providers:
  - id: upstream
    type: openai
    base_url: {url}/v1
models:
  - id: gpt-test
    provider_id: upstream
    upstream_model: fake-model
    weight: 7
    max_context_tokens: 4096
    input_per_1k: 0.001
    output_per_1k: 0.002
"""

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def setup(fake_openai: tuple[FakeOpenAI, str], start_gateway: Any) -> tuple[FakeOpenAI, Any, openai.OpenAI]:
    fake, url = fake_openai
    gateway = start_gateway(CATALOG.format(url=url))
    client = sdk_client(gateway.v1, timeout=20)
    return fake, gateway, client


def test_non_stream_completion(setup: Any) -> None:
    fake, gateway, client = setup
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, temperature=0.2
    )
    result = raw.parse()
    assert result.choices[0].message.content == "echo: hello there"
    assert result.model == "gpt-test"
    assert result.usage is not None and result.usage.total_tokens == 18
    assert raw.headers["x-tokenhub-model"] == "gpt-test"
    assert raw.headers["x-tokenhub-provider"] == "upstream"
    assert raw.headers["x-request-id"].startswith("req_")
    # The upstream saw its own model name and every parameter the client sent.
    assert fake.requests[0]["model"] == "fake-model"
    assert fake.requests[0]["temperature"] == 0.2
    gateway.stop()
    rows = gateway.request_logs()
    assert len(rows) == 1
    assert rows[0]["status"] == 200 and rows[0]["model"] == "gpt-test" and rows[0]["provider"] == "upstream"
    assert rows[0]["input_tokens"] == 11 and rows[0]["output_tokens"] == 7
    assert rows[0]["cost_usd"] == pytest.approx(11 / 1000 * 0.001 + 7 / 1000 * 0.002)
    assert rows[0]["request_id"] == raw.headers["x-request-id"]


def test_client_request_id_is_echoed(setup: Any) -> None:
    _, _, client = setup
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, extra_headers={"X-Request-Id": "trace-123"}
    )
    assert raw.headers["x-request-id"] == "trace-123"


def test_stream_without_usage(setup: Any) -> None:
    fake, _, client = setup
    fake.push(Reply(chunks=text_chunks(["Hel", "lo", "!"])))
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert {c.model for c in chunks} == {"gpt-test"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert all(c.usage is None for c in chunks)
    # We always ask the upstream for usage, to account for tokens; the client did not ask, so sees none.
    assert fake.requests[0]["stream_options"] == {"include_usage": True}


def test_stream_with_include_usage(setup: Any) -> None:
    fake, gateway, client = setup
    fake.push(Reply(chunks=text_chunks(["a", "b"])))
    chunks = list(
        client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.completion_tokens == 2 and final.usage.prompt_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["stream"] == 1 and row["status"] == 200 and row["output_tokens"] == 2
    assert row["ttft_ms"] is not None


def test_stream_wire_format_is_exactly_openai(setup: Any) -> None:
    """Byte-level: `data: <json>` events separated by blank lines, ending in `data: [DONE]`."""
    fake, gateway, _ = setup
    fake.push(Reply(chunks=text_chunks(["x"])))
    with httpx.stream(
        "POST",
        f"{gateway.v1}/chat/completions",
        timeout=10,
        json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    assert "event:" not in body


def test_tool_call_round_trip(setup: Any) -> None:
    fake, _, client = setup
    call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    fake.push(Reply(body=completion(tool_calls=[call], finish_reason="tool_calls")))
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    first = client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=tools)
    tool_call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert tool_call.id == "call_abc" and json.loads(tool_call.function.arguments) == {"city": "Oslo"}

    fake.push(Reply(body=completion("It is sunny in Oslo.")))
    follow_up: list[Any] = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"sky":"clear"}'},
    ]
    second = client.chat.completions.create(model="gpt-test", messages=follow_up, tools=tools)
    assert second.choices[0].message.content == "It is sunny in Oslo."
    sent = fake.requests[1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_abc"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_abc", "content": '{"sky":"clear"}'}
    assert fake.requests[1]["tools"] == tools


def test_streamed_tool_call_deltas_are_canonical(setup: Any) -> None:
    """An upstream that repeats id and name on every fragment (a bug peers forward) is normalised."""
    fake, _, client = setup
    base = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "fake-model"}

    def frag(args: str) -> dict[str, Any]:
        call = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": args},
        }
        return {**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}

    fake.push(
        Reply(
            chunks=[
                frag('{"q":'),
                frag('"tea"'),
                frag("}"),
                {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            ]
        )
    )
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [d.index for d in deltas] == [0, 0, 0]
    assert deltas[0].id == "call_1" and deltas[0].function.name == "lookup"
    assert all(d.id is None and d.function.name is None for d in deltas[1:])
    assert "".join(d.function.arguments or "" for d in deltas) == '{"q":"tea"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_bad_request_is_400_naming_the_field(setup: Any) -> None:
    _, gateway, client = setup
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": 5}])
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert body["param"] == "messages[0].content" and body["type"] == "invalid_request_error"
    assert caught.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="gpt-test", messages=[])
    assert empty.value.body["param"] == "messages"  # type: ignore[index]
    bad_json = httpx.post(f"{gateway.v1}/chat/completions", content=b"{not json", timeout=10)
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404(setup: Any) -> None:
    _, gateway, client = setup
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["status"] == 404 and row["error_class"] == "model_not_found"


def test_body_too_large_is_413(fake_openai: tuple[FakeOpenAI, str], start_gateway: Any) -> None:
    _, url = fake_openai
    gateway = start_gateway(CATALOG.format(url=url), max_body_bytes=2048)
    client = sdk_client(gateway.v1)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x" * 5000}])
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"  # type: ignore[index]


def test_rate_limited_upstream_is_429_with_retry_after(setup: Any) -> None:
    fake, _, client = setup
    fake.push(
        Reply(
            status=429, body=error_body("slow down", type_="rate_limit_error"), headers={"retry-after": "7"}
        )
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["retry-after-ms"] == "7000"


def test_upstream_failure_is_502(setup: Any) -> None:
    fake, _, client = setup
    fake.push(*[Reply(status=500, body=error_body("boom"))] * 3)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_error"  # type: ignore[index]
    assert len(fake.requests) == 3  # the first call and two jittered retries on the same model


def test_the_client_gets_the_completion_the_upstream_sent_with_our_model_name(setup: Any) -> None:
    """Fields the gateway does not model pass through; values an upstream sent in the wrong JSON type
    (numbers as strings) reach the client as the numbers they stand for."""
    fake, gateway, _ = setup
    sent = completion("as sent")
    sent["choices"][0]["message"]["refusal"] = None
    sent["service_tier"] = "default"
    url = f"{gateway.v1}/chat/completions"
    fake.push(Reply(body=sent))
    assert httpx.post(url, json={"model": "gpt-test", "messages": MESSAGES}, timeout=20).json() == {
        **sent,
        "model": "gpt-test",
    }
    fake.push(
        Reply(body={**sent, "created": "1700000000", "usage": {**sent["usage"], "prompt_tokens": "11"}})
    )
    assert httpx.post(url, json={"model": "gpt-test", "messages": MESSAGES}, timeout=20).json() == {
        **sent,
        "model": "gpt-test",
    }


def test_upstream_timeout_is_504(fake_openai: tuple[FakeOpenAI, str], start_gateway: Any) -> None:
    fake, url = fake_openai
    gateway = start_gateway(CATALOG.format(url=url), provider_timeout_secs=0.3)
    client = sdk_client(gateway.v1)
    fake.push(Reply(delay=3.0))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"  # type: ignore[index]


def test_no_healthy_provider_is_503_with_retry_after(setup: Any) -> None:
    fake, _, client = setup
    # Two requests of three failing calls each: five consecutive errors mark the provider down.
    fake.push(*[Reply(status=503, body=error_body("overloaded"))] * 6)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "no_healthy_provider"  # type: ignore[index]
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 30
    assert len(fake.requests) == 6  # the third request never reached the upstream


def test_models_list_and_retrieve(setup: Any) -> None:
    _, _, client = setup
    models = client.models.list()
    assert [m.id for m in models.data] == ["gpt-test"]
    assert models.data[0].owned_by == "upstream" and models.data[0].object == "model"
    assert client.models.retrieve("gpt-test").id == "gpt-test"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_unknown_route_and_method_get_openai_errors(setup: Any) -> None:
    _, gateway, _ = setup
    missing = httpx.post(f"{gateway.v1}/nothing", json={}, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    wrong = httpx.get(f"{gateway.v1}/chat/completions", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
