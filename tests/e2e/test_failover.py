"""Failover across real upstreams: by error class, before the first byte only, and logged once."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import sdk_client
from tests.fakes.openai_upstream import FakeOpenAI, Reply, error_body, text_chunks
from tokenhub.gateway.server import GatewayProtocol

# "primary" is cheaper, lighter-context and heavier-weighted, so every mode tries it first.
CATALOG = """
providers:
  - {{id: prov-a, type: openai, base_url: "{a}"}}
  - {{id: prov-b, type: openai, base_url: "{b}"}}
models:
  - {{id: primary, provider_id: prov-a, weight: 9, max_context_tokens: 8000,
      input_per_1k: 0.001, output_per_1k: 0.001}}
  - {{id: backup, provider_id: prov-b, weight: 5, max_context_tokens: 64000,
      input_per_1k: 0.01, output_per_1k: 0.01}}
"""
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def two_upstreams(
    make_fake_openai: Any, start_gateway: Any, http: Any = GatewayProtocol
) -> tuple[FakeOpenAI, FakeOpenAI, Any]:
    fake_a, url_a = make_fake_openai()
    fake_b, url_b = make_fake_openai()
    return fake_a, fake_b, start_gateway(CATALOG.format(a=url_a, b=url_b), http=http)


@pytest.fixture
def pair(make_fake_openai: Any, start_gateway: Any) -> tuple[FakeOpenAI, FakeOpenAI, Any]:
    return two_upstreams(make_fake_openai, start_gateway)


@pytest.fixture(params=["tokenhub protocol", "plain uvicorn"])
def served_pair(
    request: pytest.FixtureRequest, make_fake_openai: Any, start_gateway: Any
) -> tuple[FakeOpenAI, FakeOpenAI, Any]:
    """``pair`` under `tokenhub serve`'s protocol, which tells a request its client left, and under plain
    uvicorn, where a watcher task learns it from ``receive()``."""
    http = GatewayProtocol if request.param == "tokenhub protocol" else "httptools"
    return two_upstreams(make_fake_openai, start_gateway, http)


def client_for(gateway: Any) -> openai.OpenAI:
    return sdk_client(gateway.v1, timeout=20)


def test_server_errors_fail_over_to_the_next_model(pair: Any) -> None:
    fake_a, fake_b, gateway = pair
    fake_a.push(*[Reply(status=502, body=error_body("bad gateway"))] * 3)
    raw = client_for(gateway).chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.parse().model == "backup"
    assert raw.headers["x-tokenhub-model"] == "backup"
    assert raw.headers["x-tokenhub-reason"] == "failover-after-transient"
    assert len(fake_a.requests) == 3 and len(fake_b.requests) == 1
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["model"] == "backup" and row["attempts"] == 4 and row["status"] == 200


def test_a_rejection_moves_to_the_next_model_at_once(pair: Any) -> None:
    """A 4xx that is not about size (here a 403 from a provider that will not serve this key) is not
    retried on the same model, but another model may still answer."""
    fake_a, fake_b, gateway = pair
    fake_a.push(
        Reply(status=403, body=error_body("this key may not use the model", type_="permission_error"))
    )
    raw = client_for(gateway).chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.parse().model == "backup" and raw.headers["x-tokenhub-reason"] == "failover-after-fatal"
    assert len(fake_a.requests) == 1 and len(fake_b.requests) == 1
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["model"] == "backup" and row["attempts"] == 2 and row["status"] == 200


def test_connection_refused_fails_over(make_fake_openai: Any, start_gateway: Any) -> None:
    fake_b, url_b = make_fake_openai()
    gateway = start_gateway(CATALOG.format(a=closed_port_url(), b=url_b))
    result = client_for(gateway).chat.completions.create(model="", messages=MESSAGES)
    assert result.model == "backup"
    assert len(fake_b.requests) == 1


def test_named_model_is_tried_first(pair: Any) -> None:
    fake_a, fake_b, gateway = pair
    raw = client_for(gateway).chat.completions.with_raw_response.create(model="backup", messages=MESSAGES)
    assert raw.parse().model == "backup" and raw.headers["x-tokenhub-reason"] == "requested-model"
    assert fake_a.requests == [] and len(fake_b.requests) == 1


# "sibling" shares prov-a with "primary" and ranks ahead of "backup" in every mode.
SIBLINGS = (
    CATALOG
    + """
  - {{id: sibling, provider_id: prov-a, weight: 8, max_context_tokens: 8000,
      input_per_1k: 0.002, output_per_1k: 0.002}}
"""
)


@pytest.mark.parametrize(
    ("model", "stream"),
    [("primary", False), ("auto", False), ("primary", True)],
    ids=["named", "auto", "stream"],
)
def test_a_provider_that_asked_to_wait_is_not_called_again_through_another_model(
    make_fake_openai: Any, start_gateway: Any, model: str, stream: bool
) -> None:
    """The next model is chosen when one fails, from what is known then: a 429 with Retry-After takes its
    provider out for that long, so the request skips that provider's other models and goes elsewhere."""
    fake_a, url_a = make_fake_openai()
    fake_b, url_b = make_fake_openai()
    gateway = start_gateway(SIBLINGS.format(a=url_a, b=url_b))
    busy = error_body("slow down", type_="rate_limit_error")
    fake_a.push(Reply(status=429, body=busy, headers={"retry-after": "30"}))
    client = client_for(gateway)
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
        assert {c.model for c in chunks} == {"backup"}
    else:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
        assert raw.parse().model == "backup"
        assert raw.headers["x-tokenhub-reason"] == "failover-after-rate_limited"
    assert len(fake_a.requests) == 1 and len(fake_b.requests) == 1
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["model"] == "backup" and row["attempts"] == 2 and row["status"] == 200


def test_every_candidate_rate_limited_is_429_with_the_shortest_retry_after(pair: Any) -> None:
    fake_a, fake_b, gateway = pair
    fake_a.push(
        Reply(status=429, body=error_body("a busy", type_="rate_limit_error"), headers={"retry-after": "7"})
    )
    fake_b.push(
        Reply(
            status=429,
            body=error_body("b busy", type_="rate_limit_error"),
            headers={"retry-after-ms": "2500"},
        )
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client_for(gateway).chat.completions.create(model="auto", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["retry-after-ms"] == "2500"
    # Rate limits move on at once (no retry against a provider that asked us to wait).
    assert len(fake_a.requests) == 1 and len(fake_b.requests) == 1


def test_rate_limited_provider_is_skipped_until_its_retry_after(pair: Any) -> None:
    fake_a, _, gateway = pair
    fake_a.push(Reply(status=429, body=error_body("busy"), headers={"retry-after": "30"}))
    client = client_for(gateway)
    assert client.chat.completions.create(model="auto", messages=MESSAGES).model == "backup"
    assert client.chat.completions.create(model="auto", messages=MESSAGES).model == "backup"
    assert len(fake_a.requests) == 1  # the second request did not knock on the busy provider


def test_context_overflow_escalates_to_a_larger_context_model(pair: Any) -> None:
    fake_a, _, gateway = pair
    fake_a.push(
        Reply(
            status=400,
            body=error_body(
                "This model's maximum context length is 8000 tokens.",
                type_="invalid_request_error",
                code="context_length_exceeded",
            ),
        )
    )
    raw = client_for(gateway).chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
    assert raw.parse().model == "backup"
    assert raw.headers["x-tokenhub-reason"] == "escalated-context-overflow"


def test_request_every_upstream_rejects_is_the_clients_400(pair: Any) -> None:
    fake_a, fake_b, gateway = pair
    for fake in (fake_a, fake_b):
        fake.push(
            Reply(
                status=400, body=error_body("Invalid 'tools[0].function.name'", type_="invalid_request_error")
            )
        )
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(gateway).chat.completions.create(model="auto", messages=MESSAGES)
    assert "Invalid 'tools[0].function.name'" in caught.value.message
    # A client's bad request does not make the providers look unhealthy.
    health = gateway.components.health
    assert health.snapshot("prov-a").consecutive_errors == 0
    assert health.snapshot("prov-b").consecutive_errors == 0


def test_stream_fails_over_before_the_first_byte(pair: Any) -> None:
    fake_a, fake_b, gateway = pair
    # A sends its role chunk, then dies (three times: the first call and two retries). Nothing has
    # reached the client yet, so B may still serve.
    fake_a.push(*[Reply(chunks=text_chunks(["never", "seen"]), drop_after=1)] * 3)
    fake_b.push(Reply(chunks=text_chunks(["from", " b"])))
    chunks = list(client_for(gateway).chat.completions.create(model="auto", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "from b"
    assert {c.model for c in chunks} == {"backup"}
    assert len(fake_a.requests) == 3


def test_slow_first_token_fails_over(make_fake_openai: Any, start_gateway: Any) -> None:
    fake_a, url_a = make_fake_openai()
    _, url_b = make_fake_openai()
    gateway = start_gateway(CATALOG.format(a=url_a, b=url_b), provider_timeout_secs=0.4)
    fake_a.push(Reply(chunks=text_chunks(["late"]), ttft=3.0))
    chunks = list(client_for(gateway).chat.completions.create(model="auto", messages=MESSAGES, stream=True))
    assert {c.model for c in chunks} == {"backup"}
    assert fake_a.client_disconnected.wait(5), "the timed-out upstream request was not closed"


def test_stream_dropped_mid_way_ends_with_an_error_event_and_is_logged_once(pair: Any) -> None:
    fake_a, _, gateway = pair
    fake_a.push(Reply(chunks=text_chunks(["one", "two", "three", "four"]), drop_after=3))
    stream = client_for(gateway).chat.completions.create(model="primary", messages=MESSAGES, stream=True)
    received: list[str] = []

    def read_all() -> None:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        read_all()
    assert "".join(received) == "onetwo"
    assert "closed the connection" in caught.value.message
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["status"] == 502 and row["error_class"] == "transient" and row["stream"] == 1


def streamed_body(gateway: Any) -> str:
    """The raw SSE body of one streamed request for ``primary``."""
    with httpx.stream(
        "POST",
        f"{gateway.v1}/chat/completions",
        timeout=10,
        json={"model": "primary", "messages": MESSAGES, "stream": True},
    ) as response:
        return response.read().decode()


def test_mid_stream_error_event_has_no_event_line(pair: Any) -> None:
    fake_a, _, gateway = pair
    fake_a.push(Reply(chunks=text_chunks(["one", "two"]), drop_after=2))
    body = streamed_body(gateway)
    events = [e for e in body.split("\n\n") if e]
    assert events[-1].startswith('data: {"error":{"message":')
    assert "event:" not in body and "[DONE]" not in body


def test_content_and_an_error_event_sent_together_reach_the_client_in_order(pair: Any) -> None:
    """One upstream write holding two tokens and then an in-band error event: the gateway passes what
    arrived together on together, and must neither drop the tokens nor reorder the error."""
    fake_a, _, gateway = pair
    frames = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in text_chunks(["one", "two"])[:3]]
    error = b'data: {"error": {"message": "engine overloaded", "code": 503}}\n\n'
    fake_a.push(Reply(chunks=[b"".join(frames) + error], done=False))
    events = [orjson.loads(e.removeprefix("data: ")) for e in streamed_body(gateway).split("\n\n") if e]
    content = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert content == ["", "one", "two"]
    assert events[-1]["error"]["message"].endswith("engine overloaded")
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["error_class"] == "transient" and row["stream"] == 1


async def test_client_disconnect_mid_stream_closes_the_upstream(served_pair: Any) -> None:
    fake_a, _, gateway = served_pair
    fake_a.push(Reply(chunks=text_chunks([f"w{i}" for i in range(200)]), chunk_delay=0.05))
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "POST",
            f"{gateway.v1}/chat/completions",
            json={"model": "primary", "messages": MESSAGES, "stream": True},
        ) as response,
    ):
        async for line in response.aiter_lines():
            if "w2" in line:
                break
    assert await asyncio.to_thread(fake_a.client_disconnected.wait, 5), "upstream kept streaming"
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["status"] == 499 and row["stream"] == 1 and row["error_class"] is None


async def test_client_disconnect_while_waiting_cancels_the_upstream_call(served_pair: Any) -> None:
    fake_a, _, gateway = served_pair
    fake_a.push(Reply(delay=10.0))
    async with httpx.AsyncClient(timeout=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                f"{gateway.v1}/chat/completions", json={"model": "primary", "messages": MESSAGES}
            )
    assert await asyncio.to_thread(fake_a.client_disconnected.wait, 5), "upstream call was not cancelled"
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["status"] == 499 and row["stream"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_a_latency_budget_cuts_the_request_without_blaming_the_provider(pair: Any, stream: bool) -> None:
    """The request's deadline (here a latency directive, 300 ms) ends the wait for a slow upstream with a
    504, and no failover: time that is up for the request is up for every model. The provider is not
    counted as failing, since 300 ms is the client's limit, not the provider's (5 s here)."""
    fake_a, fake_b, gateway = pair
    fake_a.push(Reply(delay=3.0))
    messages: list[Any] = [{"role": "user", "content": "@@tokenhub latency=300\nhi"}]
    with client_for(gateway) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="primary", messages=messages, stream=stream)
    assert caught.value.status_code == 504
    assert "request exceeded its 0.3s limit" in caught.value.message
    assert fake_a.client_disconnected.wait(5), "the upstream call was not cancelled"
    assert not fake_b.requests
    assert gateway.components.health.snapshot("prov-a").consecutive_errors == 0
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["status"] == 504 and row["error_class"] == "timeout" and row["attempts"] == 1
