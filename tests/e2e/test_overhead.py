"""``x-tokenhub-overhead-ms``: the gateway's own time, waits on the upstream left out, on every path — and
the same figures in the ``tokenhub_overhead_ms`` histogram."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import start_on
from tests.fakes.openai_upstream import FakeOpenAI, Reply

CATALOG = """
providers:
  - {id: first, type: openai, base_url: "URL"}
models:
  - {id: m1, provider_id: first, weight: 5}
"""
UPSTREAM_DELAY_S = 0.5
ASK: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize("path", ["direct", "temporal"])
def test_the_overhead_header_leaves_out_the_upstreams_time(
    path: str,
    request: pytest.FixtureRequest,
    fake_openai: tuple[FakeOpenAI, str],
    start_gateway: Any,
) -> None:
    fake, url = fake_openai
    gateway = start_on(path, request, start_gateway, CATALOG.replace("URL", url))
    fake.push(Reply(delay=UPSTREAM_DELAY_S))

    started = time.perf_counter()
    answer = httpx.post(f"{gateway.v1}/chat/completions", json=ASK, timeout=30)
    elapsed_ms = (time.perf_counter() - started) * 1000

    assert answer.status_code == 200 and answer.headers["x-tokenhub-dispatch"] == path
    overhead_ms = float(answer.headers["x-tokenhub-overhead-ms"])
    # The client waited for the gateway's own time plus the upstream's: had the header counted the upstream,
    # it could not fit under this bound.
    assert 0 <= overhead_ms <= elapsed_ms - UPSTREAM_DELAY_S * 1000
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert f'tokenhub_overhead_ms_count{{path="{path}"}} 1.0' in metrics


def test_a_stream_is_charged_its_wait_for_the_first_token(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    fake, url = fake_openai
    gateway = start_gateway(CATALOG.replace("URL", url))
    fake.push(Reply(ttft=UPSTREAM_DELAY_S))

    started = time.perf_counter()
    with httpx.stream(
        "POST", f"{gateway.v1}/chat/completions", json={**ASK, "stream": True}, timeout=30
    ) as s:
        headers_ms = (time.perf_counter() - started) * 1000
        overhead_ms = float(s.headers["x-tokenhub-overhead-ms"])
        assert s.read().endswith(b"data: [DONE]\n\n")
    assert 0 <= overhead_ms <= headers_ms - UPSTREAM_DELAY_S * 1000


def test_every_response_says_its_overhead(fake_openai: tuple[FakeOpenAI, str], start_gateway: Any) -> None:
    _, url = fake_openai
    gateway = start_gateway(CATALOG.replace("URL", url))
    for answer in (
        httpx.get(f"{gateway.v1}/models", timeout=5),
        httpx.post(f"{gateway.v1}/chat/completions", content=b"{not json", timeout=5),
    ):
        assert float(answer.headers["x-tokenhub-overhead-ms"]) >= 0
