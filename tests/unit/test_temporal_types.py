"""What crosses into Temporal comes out the same: requests untouched, errors as the same HTTP answer."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from temporalio.api.common.v1 import Payloads

from tokenhub.engine import (
    ChatCompletion,
    ChatRequest,
    Decision,
    EngineError,
    InvalidRequest,
    ModelNotFound,
    NoEligibleModel,
    Policy,
    RoutingFailed,
    TokenCount,
    UpstreamError,
)
from tokenhub.gateway import reply_for
from tokenhub.temporal_integration.types import DATA_CONVERTER, ChatInput, ChatOutput, ErrorInfo


async def round_trip(value: Any, kind: type) -> Any:
    payloads = await DATA_CONVERTER.encode([value])
    wire = Payloads(payloads=payloads).SerializeToString()
    decoded = Payloads.FromString(wire).payloads
    return (await DATA_CONVERTER.decode(decoded, [kind]))[0]


async def test_a_request_crosses_exactly_as_the_client_sent_it() -> None:
    body = {
        "model": "m1",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ],
        "temperature": 0.2,
        "logit_bias": {"42": -1},
        "vendor_extension": {"keep": ["me"]},
    }
    request = ChatRequest.model_validate_json(orjson.dumps(body))
    chat = ChatInput(
        request_id="r",
        request=request,
        policy=Policy(mode="cheap", max_budget_usd=0.5),
        log_id="l",
        received_at=1.5,
        timeout_s=30,
    )
    back: ChatInput = await round_trip(chat, ChatInput)
    assert back == chat
    # Fields the client did not send stay unsent: the upstream sees the same request either way.
    assert back.request.upstream_payload("up") == request.upstream_payload("up")
    assert "top_p" not in back.request.upstream_payload("up")


async def test_an_answer_crosses_with_the_upstreams_extra_fields() -> None:
    completion = ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "m1",
            "system_fingerprint": "fp",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "total_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        },
        strict=False,
    )
    output = ChatOutput(
        decision=Decision("m1", "up", "requested-model"),
        response=completion,
        tokens=TokenCount(1, 2),
        cost_usd=0.25,
    )
    back: ChatOutput = await round_trip(output, ChatOutput)
    assert back == output
    assert back.response is not None
    assert back.response.model_dump(exclude_unset=True) == completion.model_dump(exclude_unset=True)


ERRORS: list[EngineError] = [
    InvalidRequest("bad", param="messages[0]", code="invalid_value"),
    ModelNotFound("nope"),
    NoEligibleModel({"a": "unhealthy", "b": "context_window"}, retry_after=3.5),
    NoEligibleModel({"a": "context_window"}),
    RoutingFailed(
        [
            UpstreamError("transient", "boom", provider_id="p", model_id="a", status=503),
            UpstreamError("rate_limited", "wait", provider_id="q", model_id="b", status=429, retry_after=7.0),
        ]
    ),
    RoutingFailed([UpstreamError("fatal", "bad tools", provider_id="p", model_id="a", status=400)]),
    UpstreamError("timeout", "slow", provider_id="p", model_id="a"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
async def test_an_engine_error_comes_back_as_the_same_http_answer(error: EngineError) -> None:
    back: ErrorInfo = await round_trip(ErrorInfo.of(error), ErrorInfo)
    rebuilt = back.to_error()
    assert type(rebuilt) is type(error)
    original, copy = reply_for(error), reply_for(rebuilt)
    assert (copy.status, copy.body(), copy.header_list()) == (
        original.status,
        original.body(),
        original.header_list(),
    )
