"""Key budgets over HTTP: reserved before each upstream call and settled after, so concurrent requests —
through one gateway or two sharing the database — never spend past the budget; counted on every path."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.admin_client import ADMIN, Admin
from tests.conftest import start_on, wait_until
from tests.databases import BACKENDS, database_url, write_lock_held
from tests.fakes.openai_upstream import FakeOpenAI, Reply, completion, text_chunks
from tests.temporal_server import DevServer

PRICE_IN, PRICE_OUT = 1.0, 2.0  # USD per 1,000 tokens, as in CATALOG
CATALOG = """
providers:
  - {id: first, type: openai, base_url: "URL"}
models:
  - {id: m1, provider_id: first, weight: 5, input_per_1k: 1.0, output_per_1k: 2.0}
  - {id: m2, provider_id: first, weight: 4, input_per_1k: 1.0, output_per_1k: 2.0}
  - {id: m3, provider_id: first, weight: 3, input_per_1k: 1.0, output_per_1k: 2.0}
  - {id: m4, provider_id: first, weight: 2, input_per_1k: 1.0, output_per_1k: 2.0}
"""
# Every answer writes the whole max_tokens the client allowed, the costliest answer the budget must admit.
MAX_TOKENS = 100
USAGE = {"prompt_tokens": 4, "completion_tokens": MAX_TOKENS, "total_tokens": 4 + MAX_TOKENS}
COST = (4 * PRICE_IN + MAX_TOKENS * PRICE_OUT) / 1000  # what one answered request costs: 0.204 USD
ASK: dict[str, Any] = {
    "model": "m1",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": MAX_TOKENS,
}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_fifty_concurrent_requests_through_two_replicas_never_spend_past_the_budget(
    backend: str, fake_openai: tuple[FakeOpenAI, str], start_replica: Any, tmp_path: Path
) -> None:
    fake, url = fake_openai
    # Slow answers: every concurrent request is in flight before any settles.
    fake.default = Reply(body=completion("ok", usage=USAGE), delay=0.3)
    async with database_url(backend, tmp_path) as db_url:
        replicas = [
            start_replica(CATALOG.replace("URL", url), db_url, TOKENHUB_ADMIN_TOKEN=ADMIN) for _ in range(2)
        ]
        admin = Admin(replicas[0])
        created = admin.create_key(budget_usd=1.0)
        key = bearer(created["key"])
        # Made through the first replica, the key reaches the second within its poll interval (asked of
        # /v1/models: until then the replica is open, and a chat would reach the upstream unpaid).
        other = Admin(replicas[1])
        wait_until(lambda: other.get_v1("/models").status_code == 401, timeout=10, what="the key everywhere")
        for replica in (0, 1, 0):  # nearly exhausted: 3 x 0.204 spent, room for one more answer, not two
            assert chat(replicas[replica].url, key).status_code == 200

        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(f"{replicas[i % 2].url}/v1/chat/completions", json=ASK, headers=key)
                    for i in range(50)
                )
            )

        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200] + [429] * 49
        for refused in (a for a in answers if a.status_code == 429):
            assert refused.json()["error"]["code"] == "insufficient_quota"
            assert refused.headers["x-should-retry"] == "false"
        assert len(fake.requests) == 4  # no refused request reached the upstream
        shown = admin.get(f"/keys/{created['id']}").json()
        assert shown["budget_spent_usd"] == pytest.approx(4 * COST) and shown["budget_spent_usd"] <= 1.0
        assert shown["budget_reserved_usd"] == 0 and shown["budget_remaining_usd"] < COST
        # The request logs, written by both replicas, tell the same story.
        wait_until(
            lambda: admin.get(f"/keys/{created['id']}").json()["spend_usd"] == pytest.approx(4 * COST),
            what="every request logged",
        )


def chat(base: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json=ASK, headers=headers, timeout=20)


@pytest.fixture
def budgeted(
    request: pytest.FixtureRequest, fake_openai: tuple[FakeOpenAI, str], start_gateway: Any
) -> tuple[Admin, FakeOpenAI]:
    fake, url = fake_openai
    fake.default = Reply(body=completion("ok", usage=USAGE))
    path = getattr(request, "param", "direct")
    gateway = start_on(path, request, start_gateway, CATALOG.replace("URL", url), admin_token=ADMIN)
    return Admin(gateway), fake


def test_an_exhausted_key_is_told_so_once_and_the_sdk_does_not_retry(
    budgeted: tuple[Admin, FakeOpenAI],
) -> None:
    admin, fake = budgeted
    created = admin.create_key(budget_usd=COST * 1.5)
    seen: list[int] = []
    http = openai.DefaultHttpxClient(
        event_hooks={"response": [lambda response: seen.append(response.status_code)]}
    )
    with openai.OpenAI(
        base_url=f"{admin.gateway.url}/v1", api_key=created["key"], max_retries=3, http_client=http
    ) as client:
        client.chat.completions.create(**ASK)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**ASK)
    assert refused.value.code == "insufficient_quota"
    assert seen == [200, 429] and len(fake.requests) == 1
    assert "budget" in refused.value.message


@pytest.mark.parametrize("budgeted", ["direct", "temporal"], indirect=True)
def test_every_path_and_every_orchestration_call_counts_against_the_budget(
    budgeted: tuple[Admin, FakeOpenAI],
) -> None:
    admin, fake = budgeted
    created = admin.create_key(budget_usd=100.0)
    key = bearer(created["key"])
    v1 = f"{admin.gateway.url}/v1"

    def spent() -> float:
        value: float = admin.get(f"/keys/{created['id']}").json()["budget_spent_usd"]
        return value

    answered = httpx.post(f"{v1}/chat/completions", json=ASK, headers=key, timeout=30)
    assert answered.status_code == 200 and spent() == pytest.approx(COST)

    fake.push(Reply(chunks=text_chunks(["a"] * 50)))  # 9 prompt tokens, 50 completion tokens
    with httpx.stream(
        "POST", f"{v1}/chat/completions", json={**ASK, "stream": True}, headers=key, timeout=30
    ) as streamed:
        assert streamed.headers["x-tokenhub-dispatch"] == "direct"
        streamed.read()
    streamed_cost = (9 * PRICE_IN + 50 * PRICE_OUT) / 1000
    wait_until(lambda: spent() == pytest.approx(COST + streamed_cost), what="the stream settled")

    voted = httpx.post(
        f"{v1}/plan",
        json={
            "request": {"messages": ASK["messages"], "parameters": {"max_tokens": MAX_TOKENS}},
            "orchestration": {"mode": "vote", "iterations": 3},
        },
        headers=key,
        timeout=60,
    )
    assert voted.status_code == 200, voted.text
    # Three voters and a judge: four calls, each reserved and settled.
    assert spent() == pytest.approx(COST + streamed_cost + 4 * COST)
    shown = admin.get(f"/keys/{created['id']}").json()
    assert shown["budget_reserved_usd"] == 0
    wait_until(
        lambda: admin.get(f"/keys/{created['id']}").json()["spend_usd"] == pytest.approx(spent()),
        what="the logs to agree",
    )


@pytest.mark.parametrize("budgeted", ["direct", "temporal"], indirect=True)
def test_a_budget_that_runs_out_mid_orchestration_stops_it_and_logs_what_was_spent(
    budgeted: tuple[Admin, FakeOpenAI],
) -> None:
    admin, fake = budgeted
    created = admin.create_key(budget_usd=2.5 * COST)
    body = {
        "request": {"messages": ASK["messages"], "parameters": {"max_tokens": MAX_TOKENS}},
        "orchestration": {"mode": "vote", "iterations": 3},
    }
    response = httpx.post(
        f"{admin.gateway.url}/v1/plan", json=body, headers=bearer(created["key"]), timeout=60
    )
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert response.headers["x-should-retry"] == "false"
    shown = admin.get(f"/keys/{created['id']}").json()
    assert shown["budget_spent_usd"] == pytest.approx(2 * COST) and shown["budget_reserved_usd"] == 0
    assert len(fake.requests) == 2
    wait_until(
        lambda: admin.get(f"/keys/{created['id']}").json()["spend_usd"] == pytest.approx(2 * COST),
        what="the spent calls logged",
    )


def test_a_separate_worker_charges_a_key_made_a_moment_ago_and_refuses_past_its_budget(
    fake_openai: tuple[FakeOpenAI, str],
    start_gateway: Any,
    start_worker: Any,
    temporal_server: DevServer,
    tmp_path: Path,
) -> None:
    """The worker process makes the upstream call, so it reserves the budget. Its key ring polls the store
    once a minute here: the key it is asked to charge is newer than its last look."""
    fake, url = fake_openai
    fake.default = Reply(body=completion("ok", usage=USAGE))
    queue, db_url = f"tq-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/shared.db"
    worker = start_worker(CATALOG.replace("URL", url), queue, db_url, TOKENHUB_CATALOG_POLL_MS="60000")
    gateway = start_gateway(
        CATALOG.replace("URL", url),
        admin_token=ADMIN,
        db_url=db_url,
        temporal_enabled=True,
        temporal_host=temporal_server.host,
        temporal_task_queue=queue,
        temporal_worker=False,
    )
    admin = Admin(gateway)
    wait_until(lambda: gateway.components.manager.connected, what="Temporal up")
    wait_until(lambda: worker.started, what="the worker up")
    created = admin.create_key(budget_usd=COST * 1.5)  # after the worker loaded its keys
    key = bearer(created["key"])
    first = chat(gateway.url, key)
    assert first.status_code == 200 and first.headers["x-tokenhub-dispatch"] == "temporal"
    refused = chat(gateway.url, key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert refused.headers["x-tokenhub-dispatch"] == "temporal"  # refused by the worker, not a fallback
    assert len(fake.requests) == 1
    shown = admin.get(f"/keys/{created['id']}").json()
    assert shown["budget_spent_usd"] == pytest.approx(COST) and shown["budget_reserved_usd"] == 0
    assert worker.stop() == 0, worker.log.read_text()


def test_a_store_failing_under_a_request_gets_openais_500_body_and_nothing_of_the_failure(
    budgeted: tuple[Admin, FakeOpenAI],
) -> None:
    """An error the error table does not know (here the store's, with the spend table gone) still gets
    OpenAI's error body and the request's id; its message names nothing internal."""
    admin, fake = budgeted
    created = admin.create_key(budget_usd=1.0)
    db_path = admin.gateway.db_path
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("DROP TABLE key_spend")
        db.commit()
    response = chat(admin.gateway.url, bearer(created["key"]))
    assert response.status_code == 500
    assert response.headers["x-request-id"].startswith("req_")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
    assert "key_spend" not in error["message"] and "sqlite" not in error["message"].lower()
    assert fake.requests == []  # the budget could not be reserved, so nothing was spent upstream


def test_a_budgeted_request_whose_store_is_stuck_ends_at_its_deadline_and_one_without_is_answered(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    """With the store's write lock held by another connection and a request deadline of 1 s: a key with a
    budget cannot reserve, and its request ends at the deadline (504) instead of waiting for the lock; a key
    without one never waits on the store, and is answered meanwhile."""
    fake, url = fake_openai
    fake.default = Reply(body=completion("ok", usage=USAGE))
    gateway = start_gateway(CATALOG.replace("URL", url), admin_token=ADMIN, request_timeout_secs=1.0)
    admin = Admin(gateway)
    budgeted, unbudgeted = admin.create_key(budget_usd=10.0), admin.create_key()
    with write_lock_held(gateway.db_path):
        stuck = chat(gateway.url, bearer(budgeted["key"]))
        answered = chat(gateway.url, bearer(unbudgeted["key"]))
        assert len(fake.requests) == 1  # while the lock is still held
    assert stuck.status_code == 504 and stuck.json()["error"]["code"] == "upstream_timeout"
    assert answered.status_code == 200
