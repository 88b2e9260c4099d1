"""``/admin/v1/workflows``: this gateway's workflows as Temporal records them, read through HTTP against the
session's real Temporal dev server. Visibility is eventually consistent, so lists are polled with a bound."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.test_temporal_dispatch import ADMIN, BODY, CATALOG, post, start_temporal_gateway
from tests.fakes.openai_upstream import FakeOpenAI, Reply, error_body
from tests.temporal_server import DevServer, free_port
from tokenhub.admin.workflows import STATUSES, TYPES

AUTH = {"authorization": f"Bearer {ADMIN}"}
PLAN = {"request": {"messages": [{"role": "user", "content": "Plan a picnic."}]}}
WORKFLOW_FIELDS = {
    "workflow_id",
    "run_id",
    "type",
    "status",
    "start_time",
    "close_time",
    "duration_ms",
    "request_id",
}


def admin_get(
    gateway: Any, path: str, headers: dict[str, str] | None = None, **params: Any
) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}/admin/v1{path}",
        params=params,
        headers=AUTH if headers is None else headers,
        timeout=20,
    )


def listed(gateway: Any, **params: Any) -> list[dict[str, Any]]:
    response = admin_get(gateway, "/workflows", limit=200, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["next_cursor"] is None  # every test's queue holds a handful of workflows
    items: list[dict[str, Any]] = body["items"]
    return items


def ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["workflow_id"] for item in items}


def wait_listed(gateway: Any, expected: set[str], what: str, **params: Any) -> list[dict[str, Any]]:
    """Poll the list (visibility lags behind the workflows) until it shows exactly ``expected``."""
    seen: list[list[dict[str, Any]]] = [[]]

    def shown() -> bool:
        seen[0] = listed(gateway, **params)
        return ids(seen[0]) == expected

    wait_until(shown, what=what)
    return seen[0]


def plan(gateway: Any, **headers: str) -> httpx.Response:
    body = {**PLAN, "orchestration": {"mode": "planning"}}
    return httpx.post(f"{gateway.v1}/plan", json=body, headers=headers, timeout=30)


def describe(gateway: Any, workflow_id: str) -> dict[str, Any]:
    response = admin_get(gateway, f"/workflows/{workflow_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def history(gateway: Any, workflow_id: str) -> list[dict[str, Any]]:
    response = admin_get(gateway, f"/workflows/{workflow_id}/history")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["workflow_id"] == workflow_id
    events: list[dict[str, Any]] = body["events"]
    return events


@pytest.fixture
def upstream(fake_openai: tuple[FakeOpenAI, str]) -> tuple[FakeOpenAI, str]:
    return fake_openai


def test_finished_requests_are_listed_completed_with_their_type_and_filter_by_it(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    chat, planned = post(gateway), plan(gateway)
    assert chat.status_code == planned.status_code == 200, planned.text
    chat_id, plan_id = chat.headers["x-tokenhub-workflow-id"], planned.headers["x-tokenhub-workflow-id"]
    assert plan_id == f"plan-{planned.headers['x-request-id']}"

    items = wait_listed(gateway, {chat_id, plan_id}, "both workflows completed", status="COMPLETED")
    by_id = {item["workflow_id"]: item for item in items}
    for item in items:
        assert set(item) == WORKFLOW_FIELDS
        assert item["status"] == "COMPLETED"
        assert item["start_time"].endswith("Z") and item["close_time"].endswith("Z")
        assert isinstance(item["duration_ms"], int)
        assert item["run_id"]
    assert by_id[chat_id]["type"] == "ChatWorkflow"
    assert by_id[chat_id]["request_id"] == chat.headers["x-request-id"]
    assert by_id[plan_id]["type"] == "OrchestrationWorkflow"
    assert by_id[plan_id]["request_id"] == planned.headers["x-request-id"]

    assert ids(listed(gateway)) == {chat_id, plan_id}
    assert ids(listed(gateway, type="ChatWorkflow")) == {chat_id}
    assert ids(listed(gateway, type="OrchestrationWorkflow", status="COMPLETED")) == {plan_id}
    for status in ("RUNNING", "FAILED", "TERMINATED", "TIMED_OUT", "CANCELED", "CONTINUED_AS_NEW"):
        assert listed(gateway, status=status) == []


def test_describe_summarises_input_and_result_without_the_prompt(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    fake, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    chat, planned = post(gateway), plan(gateway)
    chat_id, plan_id = chat.headers["x-tokenhub-workflow-id"], planned.headers["x-tokenhub-workflow-id"]

    described = describe(gateway, chat_id)
    assert set(described) >= WORKFLOW_FIELDS
    assert described["workflow_id"] == chat_id
    assert described["type"] == "ChatWorkflow"
    assert described["status"] == "COMPLETED"  # describe reads the workflow itself: no visibility lag
    assert described["request_id"] == chat.headers["x-request-id"]
    assert described["input"] == {
        "request_id": chat.headers["x-request-id"],
        "requested_model": "m1",
        "mode": "normal",
        "message_count": 1,
        "stream": False,
        "api_key_id": None,
    }
    result = described["result"]
    assert result["outcome"] == "ok"
    assert (result["model"], result["provider"]) == ("m1", "up")
    assert result["reason"]
    assert result["tokens"] == {"input": 11, "output": 7, "estimated": False}
    assert result["cost_usd"] == pytest.approx(11 / 1000 * 0.001 + 7 / 1000 * 0.002)
    assert result["error"] is None
    assert described["pending_activities"] == []
    raw = admin_get(gateway, f"/workflows/{chat_id}").text
    assert "hello" not in raw and "echo" not in raw  # neither the prompt nor the answer

    orchestrated = describe(gateway, plan_id)
    assert orchestrated["type"] == "OrchestrationWorkflow"
    assert orchestrated["input"]["mode"] == "planning"
    assert orchestrated["input"]["requested_model"] == "auto"
    assert orchestrated["input"]["message_count"] == 1
    assert "messages" not in orchestrated["input"]
    assert orchestrated["result"]["outcome"] == "ok"
    assert orchestrated["result"]["model"] == "m1"
    assert orchestrated["result"]["tokens"]["input"] == 11
    assert "picnic" not in admin_get(gateway, f"/workflows/{plan_id}").text

    for path in ("/workflows/chat-no-such-request", "/workflows/chat-no-such-request/history"):
        missing = admin_get(gateway, path)
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"
        assert set(missing.json()["error"]) == {"message", "type"}

    # A failure: what it tried and spent, counted as the request log counts it.
    fake.push(*[Reply(status=500, body=error_body("boom"))] * 3)
    failed = post(gateway)
    assert failed.status_code == 502
    result = describe(gateway, failed.headers["x-tokenhub-workflow-id"])["result"]
    assert result["outcome"] == "error"
    assert (result["model"], result["provider"], result["attempts"]) == ("m1", "up", 3)
    assert result["error"]["kind"] == "routing_failed"
    assert [a["status"] for a in result["error"]["attempts"]] == [500, 500, 500]
    gateway.stop()
    row = next(r for r in gateway.request_logs() if r["request_id"] == failed.headers["x-request-id"])
    assert (row["attempts"], row["error_class"]) == (result["attempts"], result["error"]["class"])


def test_show_content_adds_the_messages_and_the_answer(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server, admin_show_content=True)
    chat = post(gateway)
    described = describe(gateway, chat.headers["x-tokenhub-workflow-id"])
    assert described["input"]["messages"] == [{"role": "user", "content": "hello"}]
    assert described["result"]["response"]["choices"][0]["message"]["content"] == "echo: hello"


def test_history_names_each_activity(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    chat_id = post(gateway).headers["x-tokenhub-workflow-id"]
    plan_id = plan(gateway).headers["x-tokenhub-workflow-id"]

    events = history(gateway, chat_id)
    assert events[0]["event_type"] == "WorkflowExecutionStarted"
    assert events[-1]["event_type"] == "WorkflowExecutionCompleted"
    assert [e["event_id"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["timestamp"].endswith("Z") for e in events)
    markers = [e for e in events if e["event_type"] == "MarkerRecorded"]
    assert [m["activity_type"] for m in markers] == ["ChatActivity", "LogResultActivity"]
    assert all(m["attempt"] == 1 for m in markers)
    assert not any("failure" in e for e in events)

    events = history(gateway, plan_id)
    scheduled = [e for e in events if e["event_type"] == "ActivityTaskScheduled"]
    assert [(e["activity_type"], e["activity_id"]) for e in scheduled] == [("ModelCallActivity", "planning")]
    (started,) = [e for e in events if e["event_type"] == "ActivityTaskStarted"]
    assert (started["activity_type"], started["activity_id"], started["attempt"]) == (
        "ModelCallActivity",
        "planning",
        1,
    )
    assert "ActivityTaskCompleted" in [e["event_type"] for e in events]
    local = [e["activity_type"] for e in events if e["event_type"] == "MarkerRecorded"]
    assert local[-1] == "LogResultActivity"
    assert events[-1]["event_type"] == "WorkflowExecutionCompleted"


async def test_a_running_workflow_is_listed_running_with_its_pending_activity(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    fake, url = upstream
    # The upstream holds the call until the client hangs up; the limits leave it the time to be seen.
    gateway = start_temporal_gateway(
        start_gateway, url, temporal_server, provider_timeout_secs=120.0, request_timeout_secs=120.0
    )
    done_id = post(gateway).headers["x-tokenhub-workflow-id"]
    fake.push(Reply(delay=120.0))
    request_id = f"slow-{uuid.uuid4().hex}"
    slow_id = f"plan-{request_id}"
    body = {**PLAN, "orchestration": {"mode": "planning"}}
    async with httpx.AsyncClient(timeout=120) as http:
        hanging = asyncio.create_task(
            http.post(f"{gateway.v1}/plan", json=body, headers={"x-request-id": request_id})
        )
        # wait_until blocks: run it in a thread so this loop keeps sending the slow request.
        await asyncio.to_thread(
            wait_listed, gateway, {slow_id}, "the slow plan listed running", status="RUNNING"
        )
        running = listed(gateway, status="RUNNING", type="OrchestrationWorkflow")
        assert [(i["workflow_id"], i["status"], i["close_time"], i["duration_ms"]) for i in running] == [
            (slow_id, "RUNNING", None, None)
        ]
        assert listed(gateway, status="RUNNING", type="ChatWorkflow") == []
        await asyncio.to_thread(
            wait_listed, gateway, {done_id}, "the finished chat listed completed", status="COMPLETED"
        )

        def pending() -> list[dict[str, Any]]:
            activities: list[dict[str, Any]] = describe(gateway, slow_id)["pending_activities"]
            return activities

        await asyncio.to_thread(
            wait_until, lambda: [a["state"] for a in pending()] == ["STARTED"], what="the call started"
        )
        described = describe(gateway, slow_id)
        assert described["status"] == "RUNNING"
        assert described["result"] is None and described["close_time"] is None
        assert described["pending_activities"] == [
            {
                "activity_type": "ModelCallActivity",
                "activity_id": "planning",
                "state": "STARTED",
                "attempt": 1,
            }
        ]
        assert "ActivityTaskScheduled" in [e["event_type"] for e in history(gateway, slow_id)]

        hanging.cancel()  # the client hangs up: the gateway cancels the workflow, which records it
        with contextlib.suppress(asyncio.CancelledError):
            await hanging
    assert await asyncio.to_thread(fake.client_disconnected.wait, 20), "the upstream call was not cancelled"
    await asyncio.to_thread(
        wait_listed, gateway, {slow_id, done_id}, "both listed completed", status="COMPLETED"
    )
    assert describe(gateway, slow_id)["result"]["outcome"] == "cancelled"


def test_pages_of_one_visit_every_workflow_once(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    made = [post(gateway) for _ in range(3)]
    keyed = post(gateway, **{"Idempotency-Key": f"key-{uuid.uuid4().hex}"})
    expected = {r.headers["x-tokenhub-workflow-id"] for r in [*made, keyed]}
    assert len(expected) == 4
    items = wait_listed(gateway, expected, "four completed workflows", status="COMPLETED")
    idempotent = next(i for i in items if i["workflow_id"] == keyed.headers["x-tokenhub-workflow-id"])
    assert idempotent["workflow_id"].startswith("chat-idem-")
    assert idempotent["request_id"] is None  # the id names the key, not a request
    assert describe(gateway, idempotent["workflow_id"])["request_id"] == keyed.headers["x-request-id"]

    visited: list[str] = []
    cursor: str | None = None
    for _ in range(10):  # at most one empty page after the last: a bound, not a count
        params: dict[str, Any] = {"limit": 1, "status": "COMPLETED"}
        if cursor is not None:
            params["cursor"] = cursor
        response = admin_get(gateway, "/workflows", **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= 1
        visited += [i["workflow_id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # A cursor belongs to its filters: with others it is refused, not misread.
        other = admin_get(gateway, "/workflows", limit=1, status="RUNNING", cursor=cursor)
        assert other.status_code == 400
    assert cursor is None
    assert sorted(visited) == sorted(expected)


def test_bad_parameters_are_refused_with_the_valid_values(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)

    def refused(**params: Any) -> str:
        response = admin_get(gateway, "/workflows", **params)
        assert response.status_code == 400, (params, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        message: str = error["message"]
        return message

    for status in ("running", "Running", "DONE", ""):
        message = refused(status=status)
        assert all(valid in message for valid in STATUSES)
    for kind in ("chatworkflow", "Other", ""):
        message = refused(type=kind)
        assert all(valid in message for valid in TYPES)
    for limit in ("0", "201", "-1", "ten", "1.5"):
        assert "1 and 200" in refused(limit=limit)
    for cursor in ("%%%", "not-a-cursor!", "AAAA", "YWJj"):
        assert "cursor" in refused(cursor=cursor)
    assert admin_get(gateway, "/workflows", limit=200).status_code == 200


def test_the_workflow_endpoints_need_the_admin_token(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    gateway = start_temporal_gateway(start_gateway, url, temporal_server)
    for path in ("/workflows", "/workflows/chat-x", "/workflows/chat-x/history"):
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": ADMIN}):
            response = admin_get(gateway, path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["type"] == "authentication_error"


def test_without_temporal_the_list_is_empty_and_says_why(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    _, url = upstream
    disabled = start_gateway(CATALOG.format(url=url), admin_token=ADMIN)
    response = admin_get(disabled, "/workflows")
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None, "temporal_enabled": False}
    for path in ("/workflows/chat-x", "/workflows/chat-x/history"):
        unavailable = admin_get(disabled, path)
        assert unavailable.status_code == 503
        assert unavailable.json()["error"]["type"] == "temporal_unavailable"

    # On, but nothing answers at that address.
    unreachable = start_gateway(
        CATALOG.format(url=url),
        admin_token=ADMIN,
        temporal_enabled=True,
        temporal_host=f"127.0.0.1:{free_port()}",
    )
    response = admin_get(unreachable, "/workflows", status="RUNNING")
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None, "temporal_connected": False}
    assert post(unreachable).status_code == 200  # and requests are still answered, directly


def test_a_temporal_error_is_a_502_not_a_traceback(
    upstream: tuple[FakeOpenAI, str], start_gateway: Any, temporal_server: DevServer
) -> None:
    _, url = upstream
    # The server answers health checks, but the namespace does not exist: every workflow call fails.
    gateway = start_temporal_gateway(
        start_gateway,
        url,
        temporal_server,
        temporal_namespace=f"missing-{uuid.uuid4().hex[:8]}",
        temporal_worker=False,
    )
    for path in ("/workflows", "/workflows/chat-x", "/workflows/chat-x/history"):
        response = admin_get(gateway, path)
        assert response.status_code == 502, (path, response.text)
        error = response.json()["error"]
        assert error["type"] == "temporal_error"
        assert "not found" in error["message"]
    assert BODY  # the gateway itself still serves
