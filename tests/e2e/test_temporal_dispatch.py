"""Durable dispatch against a real Temporal dev server: what the client sees, what Temporal records."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from tests.conftest import wait_until
from tests.fakes.openai_upstream import FakeOpenAI, Reply, error_body
from tests.temporal_server import NAMESPACE, DevServer
from tokenhub.temporal_integration.types import DATA_CONVERTER, ChatOutput

ADMIN = "admin-token-for-tests-0123456789"
CATALOG = """
providers:
  - {{id: up, type: openai, base_url: "{url}"}}
models:
  - {{id: m1, provider_id: up, input_per_1k: 0.001, output_per_1k: 0.002}}
"""
BODY = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}


def temporal_settings(server: DevServer, **extra: Any) -> dict[str, Any]:
    return {
        "temporal_enabled": True,
        "temporal_host": server.host,
        "admin_token": ADMIN,
        "temporal_task_queue": f"tq-{uuid.uuid4().hex}",
        **extra,
    }


def start_temporal_gateway(start_gateway: Any, url: str, server: DevServer, **extra: Any) -> Any:
    gateway = start_gateway(CATALOG.format(url=url), **temporal_settings(server, **extra))
    manager = gateway.components.manager
    worker = extra.get("temporal_worker", True)
    wait_until(lambda: manager.connected and (manager.worker_running or not worker), what="Temporal up")
    return gateway


def post(gateway: Any, body: Any = BODY, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", json=body, headers=headers, timeout=30)


def set_flag(gateway: Any, enabled: bool) -> dict[str, Any]:
    response = httpx.put(
        f"{gateway.url}/admin/v1/temporal",
        json={"enabled": enabled},
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def admin_status(gateway: Any) -> dict[str, Any]:
    response = httpx.get(
        f"{gateway.url}/admin/v1/temporal", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    result: dict[str, Any] = response.json()
    return result


async def temporal_client(server: DevServer) -> Client:
    return await Client.connect(server.host, namespace=NAMESPACE, data_converter=DATA_CONVERTER)


async def history_summary(client: Client, workflow_id: str) -> list[str]:
    """Readable history: event types, with the activity type of each local-activity marker."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    summary = []
    for event in history.events:
        name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        if event.HasField("marker_recorded_event_attributes"):
            data = event.marker_recorded_event_attributes.details["data"].payloads[0].data
            name += ":" + json.loads(data)["activity_type"]
        summary.append(name)
    return summary


@pytest.fixture
def upstream(fake_openai: tuple[FakeOpenAI, str]) -> tuple[FakeOpenAI, str]:
    return fake_openai


async def test_a_chat_request_runs_chat_workflow_and_answers_as_the_direct_path_does(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    fake, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    durable = post(gateway)
    assert durable.status_code == 200
    assert durable.headers["x-tokenhub-dispatch"] == "temporal"
    workflow_id = durable.headers["x-tokenhub-workflow-id"]
    assert workflow_id == f"chat-{durable.headers['x-request-id']}"

    set_flag(gateway, False)
    direct = post(gateway)
    assert direct.headers["x-tokenhub-dispatch"] == "direct"
    assert durable.json() == direct.json()
    assert len(fake.requests) == 2  # one upstream call each, nothing repeated

    client = await temporal_client(temporal_server)
    events = await history_summary(client, workflow_id)
    assert events.index("MARKER_RECORDED:ChatActivity") < events.index("MARKER_RECORDED:LogResultActivity")
    assert events[-1] == "WORKFLOW_EXECUTION_COMPLETED"
    gateway.stop()
    rows = gateway.request_logs()
    assert sorted(r["path"] for r in rows) == ["direct", "temporal"]
    durable_row = next(r for r in rows if r["path"] == "temporal")
    assert durable_row["request_id"] == durable.headers["x-request-id"]
    assert durable_row["status"] == 200 and durable_row["input_tokens"] == 11


async def test_streaming_never_starts_a_workflow(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    with httpx.stream(
        "POST", f"{gateway.v1}/chat/completions", json={**BODY, "stream": True}, timeout=30
    ) as response:
        response.read()
    assert response.headers["x-tokenhub-dispatch"] == "direct"
    client = await temporal_client(temporal_server)
    with pytest.raises(RPCError):
        await client.get_workflow_handle(f"chat-{response.headers['x-request-id']}").describe()


@pytest.mark.parametrize(
    "failure",
    [
        [Reply(status=500, body=error_body("boom"))] * 3,
        [Reply(status=429, body=error_body("slow down"), headers={"retry-after": "9"})],
        [Reply(status=400, body=error_body("Invalid 'tools'", type_="invalid_request_error"))],
    ],
    ids=["server-error", "rate-limited", "bad-request"],
)
async def test_a_provider_error_inside_the_workflow_is_the_same_answer_as_direct(
    failure: list[Reply], upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    fake, url = upstream
    # Two gateways with fresh health each: a rate limit seen by one must not make the other skip the provider.
    durable_gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    direct_gateway = start_gateway(CATALOG.format(url=url))
    fake.push(*failure)
    durable = post(durable_gateway)
    fake.push(*failure)
    direct = post(direct_gateway)
    assert durable.headers["x-tokenhub-dispatch"] == "temporal"
    assert direct.headers["x-tokenhub-dispatch"] == "direct"
    assert durable.status_code == direct.status_code >= 400
    assert durable.json() == direct.json()
    assert durable.headers.get("retry-after") == direct.headers.get("retry-after")
    assert len(fake.requests) == 2 * len(failure)  # the provider error was not re-sent directly
    assert durable_gateway.components.breaker.state == "closed"
    durable_gateway.stop()
    assert [r["path"] for r in durable_gateway.request_logs()] == ["temporal"]


async def test_the_flag_flips_at_runtime_and_persists_across_restarts(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer, tmp_path: Any
) -> None:
    _, url = upstream
    db = f"sqlite:///{tmp_path}/flag.db"
    first = start_temporal_gateway(start_gateway, url, temporal_server, db_url=db)
    assert post(first).headers["x-tokenhub-dispatch"] == "temporal"
    assert set_flag(first, False)["enabled"] is False
    assert post(first).headers["x-tokenhub-dispatch"] == "direct"
    first.stop()
    # The environment says "on", but the flag was turned off since: off it stays.
    second = start_gateway(CATALOG.format(url=url), **temporal_settings(temporal_server, db_url=db))
    assert post(second).headers["x-tokenhub-dispatch"] == "direct"
    status = set_flag(second, True)
    assert status["enabled"] is True
    wait_until(lambda: second.components.manager.connected, what="Temporal connection")
    assert post(second).headers["x-tokenhub-dispatch"] == "temporal"
    second.stop()
    third = start_gateway(
        CATALOG.format(url=url), **temporal_settings(temporal_server, db_url=db, temporal_enabled=False)
    )
    wait_until(lambda: third.components.manager.connected, what="Temporal connection")
    assert post(third).headers["x-tokenhub-dispatch"] == "temporal"


async def test_an_idempotency_key_replays_the_same_answer_and_refuses_another_body(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    fake, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    key = f"key-{uuid.uuid4().hex}"
    first = post(gateway, **{"Idempotency-Key": key})
    again = post(gateway, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["x-tokenhub-workflow-id"] == first.headers["x-tokenhub-workflow-id"]
    assert again.headers["x-tokenhub-idempotency-replay"] == "true"
    assert len(fake.requests) == 1  # the replay never reached the provider
    other = post(gateway, {**BODY, "temperature": 0.5}, **{"Idempotency-Key": key})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(fake.requests) == 1
    gateway.stop()
    assert len(gateway.request_logs()) == 1


async def test_without_a_worker_the_request_falls_back_within_the_pickup_bound(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    fake, url = upstream
    gateway = start_temporal_gateway(
        start_gateway, url, temporal_server, temporal_worker=False, temporal_pickup_timeout_ms=500
    )
    response = post(gateway)
    assert response.status_code == 200
    assert response.headers["x-tokenhub-dispatch"] == "direct"
    assert len(fake.requests) == 1
    # The workflow nobody picked up was stopped, so it cannot run the request a second time later.
    request_id = response.headers["x-request-id"]
    client = await temporal_client(temporal_server)

    async def status() -> WorkflowExecutionStatus | None:
        return (await client.get_workflow_handle(f"chat-{request_id}").describe()).status

    for _ in range(100):
        if await status() == WorkflowExecutionStatus.TERMINATED:
            break
        await asyncio.sleep(0.05)
    assert await status() == WorkflowExecutionStatus.TERMINATED
    assert admin_status(gateway)["fallbacks"] == {"no_worker": 1}
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["path"] == "direct" and row["status"] == 200


async def test_a_client_that_hangs_up_cancels_the_workflow_and_the_upstream_call(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    fake, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    fake.push(Reply(delay=10.0))
    request_id = f"hangup-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=1.0) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{gateway.v1}/chat/completions", json=BODY, headers={"x-request-id": request_id})
    assert await asyncio.to_thread(fake.client_disconnected.wait, 10), "the upstream call was not cancelled"
    client = await temporal_client(temporal_server)
    handle = client.get_workflow_handle(f"chat-{request_id}", result_type=ChatOutput)
    # The workflow ends by recording the request as closed; its result says it was cancelled.
    assert (await handle.result()).cancelled
    gateway.stop()
    (row,) = gateway.request_logs()
    assert row["status"] == 499 and row["path"] == "temporal"


def test_the_admin_api_needs_the_token_and_is_closed_without_one(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    _, url = upstream
    closed = start_gateway(CATALOG.format(url=url))
    response = httpx.get(
        f"{closed.url}/admin/v1/temporal", headers={"authorization": f"Bearer {ADMIN}"}, timeout=5
    )
    assert response.status_code == 403
    assert set(response.json()["error"]) == {"message", "type"}
    guarded = start_gateway(CATALOG.format(url=url), admin_token=ADMIN)
    for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": ADMIN}):
        refused = httpx.put(
            f"{guarded.url}/admin/v1/temporal", json={"enabled": True}, headers=headers, timeout=5
        )
        assert refused.status_code == 401
    assert admin_status(guarded)["enabled"] is False  # nothing changed
    bad = httpx.put(
        f"{guarded.url}/admin/v1/temporal",
        json={"enabled": "yes"},
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=5,
    )
    assert bad.status_code == 400 and "enabled" in bad.json()["error"]["message"]


def test_prometheus_shows_the_dispatch_path_and_temporal_state(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    post(gateway)
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert 'tokenhub_dispatch_total{path="temporal"} 1.0' in text
    assert "tokenhub_temporal_up 1.0" in text
    assert "tokenhub_temporal_circuit_state 0.0" in text
    assert (
        'tokenhub_requests_total{mode="normal",model="m1",path="temporal",provider="up",status="200"} 1.0'
        in text
    )
