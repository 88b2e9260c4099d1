"""Liveness, readiness and Prometheus metrics, read over HTTP as an orchestrator would."""

from __future__ import annotations

import http.client
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.openai_upstream import FakeOpenAI, Reply, error_body

CATALOG = """
providers:
  - {{id: up, type: openai, base_url: "{url}"}}
models:
  - {{id: m1, provider_id: up, input_per_1k: 1.0, output_per_1k: 2.0}}
"""


def test_healthz_and_readyz(fake_openai: tuple[FakeOpenAI, str], start_gateway: Any) -> None:
    _, url = fake_openai
    gateway = start_gateway(CATALOG.format(url=url))
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["store"] == "ok" and ready.json()["providers"] == {"up": "healthy"}


def test_a_head_only_answer_is_not_held_back_and_the_connection_goes_on(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    """The gateway holds a response's head for its body's write; an answer with no body must still go out."""
    _, url = fake_openai
    gateway = start_gateway(CATALOG.format(url=url))
    connection = http.client.HTTPConnection("127.0.0.1", gateway.server.port, timeout=5)
    try:
        for method in ("HEAD", "GET", "HEAD"):  # one keep-alive connection
            connection.request(method, "/healthz")
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200
            assert body == (b"" if method == "HEAD" else b'{"status":"ok"}')
    finally:
        connection.close()


def test_readyz_is_503_with_nothing_to_route_to(start_gateway: Any) -> None:
    gateway = start_gateway("providers: []\nmodels: []\n")
    ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["models_available"] == 0
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200


def test_metrics_count_requests_tokens_cost_and_errors(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    fake, url = fake_openai
    gateway = start_gateway(CATALOG.format(url=url))
    client = sdk_client(gateway.v1)
    client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    fake.push(Reply(status=429, body=error_body("busy"), headers={"retry-after": "1"}))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert (
        'tokenhub_requests_total{mode="normal",model="m1",path="direct",provider="up",status="200"} 1.0'
        in text
    )
    assert (
        'tokenhub_requests_total{mode="normal",model="m1",path="direct",provider="up",status="429"} 1.0'
        in text
    )
    assert 'tokenhub_tokens_total{kind="input",model="m1"} 11.0' in text
    assert 'tokenhub_tokens_total{kind="output",model="m1"} 7.0' in text
    assert 'tokenhub_cost_usd_total{model="m1"} 0.025' in text
    assert 'tokenhub_upstream_errors_total{error_class="rate_limited",provider="up"} 1.0' in text
    assert 'tokenhub_request_latency_ms_count{model="m1",stream="false"} 2.0' in text
    assert 'tokenhub_provider_health_state{provider="up"} 0.0' in text
