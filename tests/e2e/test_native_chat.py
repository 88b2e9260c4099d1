"""``/v1/chat`` (policy, hints, shaping), directives and the mode header, on both dispatch paths."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import start_on
from tests.fakes.openai_upstream import FakeOpenAI, Reply, completion

# "cheap" is cheap and light, "smart" heavy and dear: the mode decides between them.
CATALOG = """
providers:
  - {{id: p-cheap, type: openai, base_url: "{cheap}"}}
  - {{id: p-smart, type: openai, base_url: "{smart}"}}
models:
  - {{id: cheap, provider_id: p-cheap, weight: 2, input_per_1k: 0.1, output_per_1k: 0.1}}
  - {{id: smart, provider_id: p-smart, weight: 10, input_per_1k: 10.0, output_per_1k: 30.0}}
"""
HELLO: list[Any] = [{"role": "user", "content": "hello"}]


class Setup:
    def __init__(self, cheap: FakeOpenAI, smart: FakeOpenAI, gateway: Any) -> None:
        self.cheap, self.smart, self.gateway = cheap, smart, gateway

    def chat(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(f"{self.gateway.v1}/chat", json=body, headers=headers, timeout=30)

    def completions(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(f"{self.gateway.v1}/chat/completions", json=body, headers=headers, timeout=30)


@pytest.fixture(params=["direct", "temporal"])
def setup(request: pytest.FixtureRequest, make_fake_openai: Any, start_gateway: Any) -> Setup:
    cheap, cheap_url = make_fake_openai()
    smart, smart_url = make_fake_openai()
    gateway = start_on(
        request.param, request, start_gateway, CATALOG.format(cheap=cheap_url, smart=smart_url)
    )
    return Setup(cheap, smart, gateway)


def test_chat_answers_in_the_native_envelope(setup: Setup) -> None:
    response = setup.chat({"request": {"messages": HELLO}, "policy": {"mode": "high_confidence"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"negotiated_model", "estimated_cost_usd", "routing_reason", "response"}
    assert body["negotiated_model"] == "smart" and body["routing_reason"] == "routed-high_confidence"
    assert body["response"]["choices"][0]["message"]["content"] == "echo: hello"
    assert body["estimated_cost_usd"] == pytest.approx(11 / 1000 * 10.0 + 7 / 1000 * 30.0)


def test_a_hint_names_the_preferred_model_even_with_a_vendor_prefix(setup: Setup) -> None:
    body = setup.chat({"request": {"messages": HELLO, "model_hint": "acme/cheap"}}).json()
    assert body["negotiated_model"] == "cheap" and body["routing_reason"] == "requested-model"
    unknown = setup.chat(
        {"request": {"messages": HELLO, "model_hint": "nobody"}, "policy": {"mode": "cheap"}}
    )
    assert unknown.json()["negotiated_model"] == "cheap"  # an unknown hint leaves the choice to the engine


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request": {"messages": HELLO}, "policy": {"max_budget_usd": 500}}, "policy.max_budget_usd"),
        ({"request": {"messages": HELLO}, "policy": {"mode": "fastest"}}, "policy.mode"),
        ({"request": {"messages": HELLO}, "policy": {"max_latency_ms": 0}}, "policy.max_latency_ms"),
        (
            {"request": {"messages": HELLO, "parameters": {"temperature": "hot"}}},
            "request.parameters.temperature",
        ),
        ({"request": {"messages": [{"role": "user", "content": 3}]}}, "request.messages[0].content"),
        ({"request": {"messages": []}}, "request.messages"),
        ({"policy": {"mode": "cheap"}}, "request"),
        ({"request": {"messages": HELLO, "output_schema": {"type": 7}}}, "request.output_schema"),
    ],
)
def test_invalid_native_requests_are_400s_naming_the_field(
    setup: Setup, body: dict[str, Any], param: str
) -> None:
    response = setup.chat(body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert setup.cheap.requests == [] and setup.smart.requests == []


def test_the_budget_is_a_hard_limit_on_what_a_call_may_cost(setup: Setup) -> None:
    # 0.01 USD: the dear model's prompt alone costs more (6 estimated tokens at 10/1k), and the cheap one may
    # write only what is left: (0.01 - 6/1000 * 0.1) / 0.1 per 1k = 94 tokens, not the 5,000 asked for.
    response = setup.chat(
        {
            "request": {"messages": HELLO, "parameters": {"max_tokens": 5000}},
            "policy": {"mode": "high_confidence", "max_budget_usd": 0.01},
        }
    )
    assert response.status_code == 200, response.text
    assert response.json()["negotiated_model"] == "cheap"
    assert setup.cheap.requests[0]["max_tokens"] == 94
    assert setup.smart.requests == []
    assert response.json()["estimated_cost_usd"] <= 0.01
    too_small = setup.chat({"request": {"messages": HELLO}, "policy": {"max_budget_usd": 0.0001}})
    assert too_small.status_code == 400 and too_small.json()["error"]["code"] == "budget_exceeded"


def test_directives_override_the_policy_and_never_reach_the_upstream(setup: Setup) -> None:
    body = {
        "request": {"messages": [{"role": "user", "content": "@@tokenhub mode=cheap\nWhat is 2+2?"}]},
        "policy": {"mode": "high_confidence"},
    }
    response = setup.chat(body)
    assert response.json()["negotiated_model"] == "cheap"
    assert setup.cheap.requests[0]["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    on_completions = setup.completions(
        {
            "model": "auto",
            "messages": [{"role": "user", "content": "@@tokenhub\nmode=high_confidence\n@@end\nAnd 3+3?"}],
        }
    )
    assert on_completions.headers["x-tokenhub-model"] == "smart"
    assert setup.smart.requests[-1]["messages"] == [{"role": "user", "content": "And 3+3?"}]


def test_a_bad_directive_is_a_400_naming_it(setup: Setup) -> None:
    response = setup.completions(
        {
            "model": "auto",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "@@tokenhub budget=lots\nhi"},
            ],
        }
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[1].content" and "budget=lots" in error["message"]
    assert error["code"] == "invalid_directive"


def test_the_mode_header_chooses_for_clients_that_cannot_edit_messages(setup: Setup) -> None:
    cheap = setup.completions({"model": "auto", "messages": HELLO}, **{"x-tokenhub-mode": "cheap"})
    smart = setup.completions({"model": "auto", "messages": HELLO}, **{"x-tokenhub-mode": "high_confidence"})
    assert (cheap.headers["x-tokenhub-model"], smart.headers["x-tokenhub-model"]) == ("cheap", "smart")
    bad = setup.completions({"model": "auto", "messages": HELLO}, **{"x-tokenhub-mode": "warp"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-tokenhub-mode"


def test_output_format_shapes_the_answer_and_keeps_the_usage(setup: Setup) -> None:
    setup.cheap.push(Reply(body=completion('<think>hmm</think>Here:\n```json\n{"answer": 4}\n```')))
    response = setup.chat(
        {
            "request": {"messages": HELLO, "model_hint": "cheap"},
            "output_format": {"type": "json", "strip_think": True},
        }
    )
    answer = response.json()["response"]
    assert answer["choices"][0]["message"]["content"] == '{"answer": 4}'
    assert answer["usage"]["total_tokens"] == 18


def test_an_answer_that_misses_the_schema_is_a_422_and_is_logged_with_its_cost(setup: Setup) -> None:
    setup.cheap.push(Reply(body=completion('{"answer": "four"}')))
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    response = setup.chat({"request": {"messages": HELLO, "model_hint": "cheap", "output_schema": schema}})
    assert response.status_code == 422
    assert "'four' is not of type 'integer'" in response.json()["error"]["message"]
    # The Go API's output_format.schema (JSON text) is enforced the same way.
    setup.cheap.push(Reply(body=completion('{"answer": 4}')))
    ok = setup.chat(
        {
            "request": {"messages": HELLO, "model_hint": "cheap"},
            "output_format": {"schema": '{"required": ["answer"]}'},
        }
    )
    assert ok.status_code == 200
    setup.gateway.stop()
    failed = next(r for r in setup.gateway.request_logs() if r["status"] == 422)
    assert failed["error_class"] == "output_invalid" and failed["cost_usd"] > 0


def test_chat_can_stream_and_then_never_uses_temporal(setup: Setup) -> None:
    with httpx.stream(
        "POST", f"{setup.gateway.v1}/chat", timeout=30, json={"request": {"messages": HELLO, "stream": True}}
    ) as response:
        body = response.read().decode()
    assert response.headers["x-tokenhub-dispatch"] == "direct"
    assert body.endswith("data: [DONE]\n\n") and '"object":"chat.completion.chunk"' in body
