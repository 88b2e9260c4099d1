"""Per-key rate limits over HTTP: OpenAI's x-ratelimit-* headers on every keyed answer, 429 with Retry-After
and retry-after-ms when a key is out, and the openai SDK waiting for them and then succeeding."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.admin_client import ADMIN, Admin
from tests.fakes.openai_upstream import FakeOpenAI

CATALOG = """
providers:
  - {id: first, type: openai, base_url: "URL"}
models:
  - {id: m1, provider_id: first, weight: 5}
"""
HELLO: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def admin(fake_openai: tuple[FakeOpenAI, str], start_gateway: Any) -> Admin:
    _, url = fake_openai
    return Admin(start_gateway(CATALOG.replace("URL", url), admin_token=ADMIN))


def test_each_answer_says_what_is_left_and_the_request_after_the_last_is_refused(admin: Admin) -> None:
    secret = admin.create_key(rpm=3)["key"]
    answers = [admin.chat(key=secret) for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-limit-requests"] for a in answers[:3]] == ["3"] * 3
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert answers[0].headers["x-ratelimit-reset-requests"].endswith("s")  # "20s": one request's refill
    refused = answers[3]
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    # One request refills every 20 s: the wait is under that, and both headers say the same.
    retry_ms = int(refused.headers["retry-after-ms"])
    assert 0 < retry_ms <= 20_000
    assert int(refused.headers["retry-after"]) == -(-retry_ms // 1000)
    assert "x-should-retry" not in refused.headers  # worth retrying, after the wait


def test_the_openai_sdk_waits_as_told_and_then_succeeds(admin: Admin) -> None:
    # 60 a minute: one request back every second, so the SDK's wait is short.
    secret = admin.create_key(rpm=60)["key"]
    while (refused := admin.chat(key=secret)).status_code != 429:
        pass
    # Take the next request as soon as it is back: the one after is then a whole second away.
    time.sleep(int(refused.headers["retry-after-ms"]) / 1000 + 0.05)
    assert admin.chat(key=secret).status_code == 200
    seen: list[tuple[int, str | None]] = []

    def note(response: Any) -> None:
        seen.append((response.status_code, response.headers.get("retry-after-ms")))

    http = openai.DefaultHttpxClient(event_hooks={"response": [note]})
    with openai.OpenAI(
        base_url=f"{admin.gateway.url}/v1", api_key=secret, max_retries=2, http_client=http
    ) as client:
        answer = client.chat.completions.create(model="m1", messages=HELLO)

    assert answer.choices[0].message.content == "echo: hello"
    assert [status for status, _ in seen] == [429, 200]
    assert 0 < int(seen[0][1] or 0) <= 1000


def test_tokens_per_minute_refuse_once_the_tokens_are_used(admin: Admin) -> None:
    secret = admin.create_key(tpm=40)["key"]  # every answer of the fake uses 18 tokens
    answers = [admin.chat(key=secret) for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-tokens"] for a in answers] == ["40", "22", "4", "0"]
    assert answers[3].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(answers[3].headers["retry-after"]) >= 1


def test_a_key_without_limits_gets_no_rate_headers(admin: Admin) -> None:
    secret = admin.create_key()["key"]
    answer = admin.chat(key=secret)
    assert answer.status_code == 200
    assert not [name for name in answer.headers if name.startswith("x-ratelimit-")]


def test_limits_count_per_key(admin: Admin) -> None:
    first, second = admin.create_key(rpm=1)["key"], admin.create_key(rpm=1)["key"]
    assert admin.chat(key=first).status_code == 200
    assert admin.chat(key=first).status_code == 429
    assert admin.chat(key=second).status_code == 200
