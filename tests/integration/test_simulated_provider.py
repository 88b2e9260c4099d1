"""The simulated provider: a real provider type for demos and drills, deterministic given a seed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import as_sent
from tokenhub.config import SimulatedOptions
from tokenhub.engine import ChatRequest, Target, UpstreamError
from tokenhub.engine.providers import SimulatedProvider
from tokenhub.engine.streaming import ChunkNormaliser

TARGET = Target(model_id="sim-model", upstream_model="sim-model")


def request(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": "hello"}], **fields})


async def test_same_seed_same_answers() -> None:
    options = SimulatedOptions(ttft_ms=0, tokens_per_s=10_000, seed=42)
    first, second = SimulatedProvider("a", options), SimulatedProvider("b", options)
    for _ in range(3):
        a = await first.send(request(), TARGET, timeout=5)
        b = await second.send(request(), TARGET, timeout=5)
        assert a.choices[0].message.content == b.choices[0].message.content
    other = await SimulatedProvider("c", SimulatedOptions(ttft_ms=0, tokens_per_s=10_000, seed=7)).send(
        request(), TARGET, timeout=5
    )
    assert other.choices[0].message.content != a.choices[0].message.content


async def test_max_tokens_bounds_the_answer_and_sets_length() -> None:
    provider = SimulatedProvider("a", SimulatedOptions(ttft_ms=0, tokens_per_s=10_000, seed=1))
    result = await provider.send(request(max_tokens=3), TARGET, timeout=5)
    assert result.usage is not None and result.usage.completion_tokens == 3
    assert result.choices[0].finish_reason == "length"


async def test_time_to_first_token_and_rate_are_honoured() -> None:
    provider = SimulatedProvider("a", SimulatedOptions(ttft_ms=100, tokens_per_s=100, seed=1))
    started = time.monotonic()
    chunks = [c async for batch in provider.stream(request(max_tokens=10), TARGET, timeout=5) for c in batch]
    elapsed = time.monotonic() - started
    # 100 ms to the first token, then 9 gaps of 10 ms: it cannot be faster than that (a floor, not a
    # performance bound; nothing here asserts how fast the machine is).
    assert elapsed >= 0.19
    normaliser = ChunkNormaliser(model_id="sim-model", include_usage=True, prompt_tokens_estimate=0)
    out = as_sent([o for c in chunks for o in normaliser.feed(c)]) + normaliser.finish()
    assert out[-1]["usage"]["completion_tokens"] == 10
    assert [o["choices"][0]["finish_reason"] for o in out[:-1]][-1] == "length"


@pytest.mark.parametrize(("kind", "status"), [("rate_limited", 429), ("transient", 503), ("fatal", 400)])
async def test_configured_failures(kind: Any, status: int) -> None:
    provider = SimulatedProvider("a", SimulatedOptions(ttft_ms=0, fail_rate=1.0, fail_kind=kind, seed=1))
    with pytest.raises(UpstreamError) as caught:
        await provider.send(request(), TARGET, timeout=5)
    assert caught.value.error_class == kind and caught.value.status == status


async def test_a_slow_simulated_upstream_times_out() -> None:
    provider = SimulatedProvider("a", SimulatedOptions(ttft_ms=5_000, seed=1))
    with pytest.raises(UpstreamError) as caught:
        await provider.send(request(), TARGET, timeout=0.05)
    assert caught.value.error_class == "timeout"


async def test_tools_offered_get_a_tool_call_then_a_text_answer() -> None:
    provider = SimulatedProvider("a", SimulatedOptions(ttft_ms=0, tokens_per_s=10_000, seed=1))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {
                    "type": "object",
                    "properties": {"zone": {"type": "string"}},
                    "required": ["zone"],
                },
            },
        }
    ]
    called = await provider.send(request(tools=tools), TARGET, timeout=5)
    call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert called.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_time" and call.function.arguments == '{"zone":"sim"}'
    answered = await provider.send(
        ChatRequest.model_validate(
            {
                "tools": tools,
                "messages": [
                    {"role": "user", "content": "time?"},
                    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": "noon"},
                ],
            }
        ),
        TARGET,
        timeout=5,
    )
    assert answered.choices[0].message.content and answered.choices[0].finish_reason == "stop"
