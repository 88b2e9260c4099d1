"""Orchestration on both paths, against fake upstreams scripted per model: who was asked what, in which
order, what was selected, what it all cost — the same answer directly and through Temporal."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from tests.conftest import start_on, wait_until
from tests.fakes.openai_upstream import FakeOpenAI, Reply, completion, error_body
from tests.temporal_server import NAMESPACE, DevServer
from tokenhub.temporal_integration.types import DATA_CONVERTER
from tokenhub.temporal_integration.workflows import ChatWorkflow, OrchestrationWorkflow

MODELS = {  # model: (weight, input_per_1k, output_per_1k)
    "planner": (9, 1.0, 2.0),
    "critic": (8, 0.5, 1.0),
    "third": (7, 0.25, 0.5),
    "judge": (6, 0.1, 0.2),
}
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def cost(*models: str) -> float:
    return sum(11 / 1000 * MODELS[m][1] + 7 / 1000 * MODELS[m][2] for m in models)


def answer(text: str) -> Reply:
    return Reply(body=completion(text, usage=USAGE))


def said(fake: FakeOpenAI, index: int) -> str:
    """Everything the model was told in its ``index``-th request, system prompt included."""
    return "\n".join(str(m.get("content")) for m in fake.requests[index]["messages"])


class Orchestra:
    def __init__(self, fakes: dict[str, FakeOpenAI], gateway: Any) -> None:
        self.fakes = fakes
        self.gateway = gateway

    def plan(self, orchestration: dict[str, Any], content: str = "Plan a picnic.") -> httpx.Response:
        body = {
            "request": {"messages": [{"role": "user", "content": content}]},
            "orchestration": orchestration,
        }
        return httpx.post(f"{self.gateway.v1}/plan", json=body, timeout=60)


@pytest.fixture(params=["direct", "temporal"])
def orchestra(request: pytest.FixtureRequest, make_fake_openai: Any, start_gateway: Any) -> Orchestra:
    fakes, providers, models = {}, [], []
    for name, (weight, price_in, price_out) in MODELS.items():
        fake, url = make_fake_openai()
        fakes[name] = fake
        providers.append(f'  - {{id: p-{name}, type: openai, base_url: "{url}"}}')
        models.append(
            f"  - {{id: {name}, provider_id: p-{name}, weight: {weight}, "
            f"input_per_1k: {price_in}, output_per_1k: {price_out}}}"
        )
    catalog = "providers:\n" + "\n".join(providers) + "\nmodels:\n" + "\n".join(models) + "\n"
    gateway = start_on(request.param, request, start_gateway, catalog)
    return Orchestra(fakes, gateway)


def test_adversarial_plans_critiques_and_refines(orchestra: Orchestra) -> None:
    planner, critic = orchestra.fakes["planner"], orchestra.fakes["critic"]
    planner.push(answer("PLAN v1"), answer("PLAN v2"))
    critic.push(answer("Too few sandwiches."))
    response = orchestra.plan(
        {"mode": "adversarial", "iterations": 1, "primary_model_id": "planner", "review_model_id": "critic"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == {
        "initial_plan": "PLAN v1",
        "critique": "Too few sandwiches.",
        "refined_plan": "PLAN v2",
    }
    assert body["routing_reason"] == "adversarial-orchestration"
    assert body["negotiated_model"] == "planner"
    assert body["estimated_cost_usd"] == pytest.approx(cost("planner", "critic", "planner"))
    # Who was asked what, in order: the plan, a critique of it, a refinement with both.
    assert len(planner.requests) == 2 and len(critic.requests) == 1
    assert "Plan a picnic." in said(planner, 0) and "planning assistant" in said(planner, 0)
    assert "PLAN v1" in said(critic, 0) and "critical reviewer" in said(critic, 0)
    assert "PLAN v1" in said(planner, 1) and "Too few sandwiches." in said(planner, 1)
    orchestra.gateway.stop()
    (row,) = orchestra.gateway.request_logs()
    assert row["status"] == 200 and row["attempts"] == 3 and row["mode"] == "adversarial"
    assert row["cost_usd"] == pytest.approx(cost("planner", "critic", "planner"))


@pytest.mark.parametrize("orchestra", ["temporal"], indirect=True)
async def test_both_workflows_replay_their_real_histories_in_the_sandbox(
    orchestra: Orchestra, temporal_server: DevServer
) -> None:
    """The worker runs workflows outside the SDK's sandbox (it is cheaper); the sandbox's checks are made
    here instead: a clock, randomness or I/O in workflow code fails the replay, as any nondeterminism does."""
    orchestra.fakes["planner"].push(answer("Hello."), answer("PLAN v1"), answer("PLAN v2"))
    orchestra.fakes["critic"].push(answer("Too few sandwiches."))
    async with httpx.AsyncClient(timeout=60) as http:
        chat = await http.post(
            f"{orchestra.gateway.v1}/chat/completions",
            json={"model": "planner", "messages": [{"role": "user", "content": "Hi."}]},
        )
    plan = orchestra.plan(
        {"mode": "adversarial", "iterations": 1, "primary_model_id": "planner", "review_model_id": "critic"}
    )
    assert chat.status_code == 200 and plan.status_code == 200, (chat.text, plan.text)
    client = await Client.connect(temporal_server.host, namespace=NAMESPACE, data_converter=DATA_CONVERTER)
    histories = [
        await client.get_workflow_handle(response.headers["x-tokenhub-workflow-id"]).fetch_history()
        for response in (chat, plan)
    ]
    for runner in (SandboxedWorkflowRunner(), UnsandboxedWorkflowRunner()):
        replayer = Replayer(
            workflows=[ChatWorkflow, OrchestrationWorkflow],
            data_converter=DATA_CONVERTER,
            workflow_runner=runner,
        )
        for history in histories:
            await replayer.replay_workflow(history)  # raises on any failure or nondeterminism


def test_adversarial_can_return_the_plan_only(orchestra: Orchestra) -> None:
    orchestra.fakes["planner"].push(answer("JUST THE PLAN"))
    response = orchestra.plan(
        {"mode": "adversarial", "return_plan_only": True, "primary_model_id": "planner"}
    )
    assert response.json()["response"] == {"initial_plan": "JUST THE PLAN"}
    assert response.json()["routing_reason"] == "adversarial-plan-only"
    assert orchestra.fakes["critic"].requests == []


def test_vote_asks_distinct_models_and_a_judge_that_did_not_vote(orchestra: Orchestra) -> None:
    fakes = orchestra.fakes
    for voter, text in (("planner", "Answer P"), ("critic", "Answer C"), ("third", "Answer T")):
        fakes[voter].push(answer(text))
    fakes["judge"].push(answer("The best is 2."))
    response = orchestra.plan({"mode": "vote", "iterations": 3, "review_model_id": "judge"})
    assert response.status_code == 200, response.text
    vote = response.json()["response"]
    listed = [entry["content"] for entry in vote["responses"]]
    assert sorted(listed) == ["Answer C", "Answer P", "Answer T"]
    assert {entry["model"] for entry in vote["responses"]} == {"planner", "critic", "third"}
    assert vote["judge"] == "judge" and vote["selected"] == 1
    assert [entry["selected"] for entry in vote["responses"]] == [False, True, False]
    # The judge saw the responses in the order they are listed, numbered from 1.
    shown = said(fakes["judge"], 0)
    assert shown.index(listed[0]) < shown.index(listed[1]) < shown.index(listed[2])
    assert response.json()["negotiated_model"] == vote["responses"][1]["model"]
    assert response.json()["estimated_cost_usd"] == pytest.approx(cost("planner", "critic", "third", "judge"))


def test_a_failed_judge_is_reported_not_hidden(orchestra: Orchestra) -> None:
    fakes = orchestra.fakes
    for voter in ("planner", "critic", "third"):
        fakes[voter].push(answer(f"from {voter}"))
    # Every other model voted, so the named judge is the only one that may judge; and it is down.
    fakes["judge"].push(*[Reply(status=500, body=error_body("judge down"))] * 3)
    response = orchestra.plan({"mode": "vote", "iterations": 3, "review_model_id": "judge"})
    assert response.status_code == 200
    vote = response.json()["response"]
    assert "vote judge phase" in vote["judge_error"] and vote["selected"] == 0
    assert response.json()["routing_reason"] == "vote-judge-failed"


def test_refine_improves_in_rounds_and_reports_the_rounds_completed(orchestra: Orchestra) -> None:
    planner = orchestra.fakes["planner"]
    planner.push(answer("draft"), answer("better"), Reply(status=400, body=error_body("no more", type_="x")))
    response = orchestra.plan({"mode": "refine", "iterations": 3, "primary_model_id": "planner"})
    assert response.status_code == 200, response.text
    assert response.json()["response"] == {"refined_response": "better", "iterations": 1, "model": "planner"}
    assert "draft" in said(planner, 1) and "better" in said(planner, 2)
    assert response.json()["estimated_cost_usd"] == pytest.approx(cost("planner", "planner"))


def test_planning_is_one_routed_call_answered_as_a_completion(orchestra: Orchestra) -> None:
    orchestra.fakes["planner"].push(answer("the plan"))
    response = orchestra.plan({"mode": "planning"})
    body = response.json()
    assert body["negotiated_model"] == "planner"  # the heaviest model wins with planning weights
    assert body["response"]["choices"][0]["message"]["content"] == "the plan"
    assert body["response"]["usage"] == USAGE


def test_a_failed_phase_is_named_and_what_it_spent_is_logged(orchestra: Orchestra) -> None:
    down = [Reply(status=500, body=error_body("down"))] * 3
    orchestra.fakes["planner"].push(answer("PLAN"), *down)
    for name in ("critic", "third", "judge"):  # every model a critique could fail over to
        orchestra.fakes[name].push(*down)
    response = orchestra.plan(
        {"mode": "adversarial", "primary_model_id": "planner", "review_model_id": "critic"}
    )
    assert response.status_code == 502
    assert response.json()["error"]["message"].startswith("adversarial critique phase:")
    assert len(orchestra.fakes["planner"].requests) == 4  # the plan, then three tries as the last resort
    orchestra.gateway.stop()
    (row,) = orchestra.gateway.request_logs()
    assert row["status"] == 502 and row["cost_usd"] == pytest.approx(cost("planner"))


def test_the_composite_answer_is_checked_against_the_output_schema(orchestra: Orchestra) -> None:
    orchestra.fakes["planner"].push(answer("PLAN"))
    schema = {"type": "object", "required": ["initial_plan", "budget"]}
    response = orchestra.plan(
        {
            "mode": "adversarial",
            "return_plan_only": True,
            "primary_model_id": "planner",
            "output_schema": schema,
        }
    )
    assert response.status_code == 422
    assert "'budget' is a required property" in response.json()["error"]["message"]


def test_a_worker_lost_mid_orchestration_resumes_without_repeating_finished_phases(
    make_fake_openai: Any, start_gateway: Any, temporal_server: DevServer, tmp_path: Any
) -> None:
    """Kill the worker process after the plan phase; another worker finishes, and the plan is not re-asked."""
    planner, planner_url = make_fake_openai()
    critic, critic_url = make_fake_openai()
    catalog = (
        "providers:\n"
        f'  - {{id: p-planner, type: openai, base_url: "{planner_url}"}}\n'
        f'  - {{id: p-critic, type: openai, base_url: "{critic_url}"}}\n'
        "models:\n"
        "  - {id: planner, provider_id: p-planner, weight: 9}\n"
        "  - {id: critic, provider_id: p-critic, weight: 8}\n"
    )
    config = tmp_path / "catalog.yaml"
    config.write_text(catalog)
    queue = f"tq-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "TOKENHUB_TEMPORAL_HOST": temporal_server.host,
        "TOKENHUB_TEMPORAL_TASK_QUEUE": queue,
        "TOKENHUB_DB_URL": f"sqlite:///{tmp_path}/worker.db",
        "TOKENHUB_LOG_LEVEL": "warning",
    }

    def worker(name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "tokenhub", "worker", "--config", str(config)],
                env=env,
                stdout=log,
                stderr=log,
            )

    gateway = start_gateway(
        catalog,
        temporal_enabled=True,
        temporal_host=temporal_server.host,
        temporal_task_queue=queue,
        temporal_worker=False,
        temporal_pickup_timeout_ms=30_000,
    )
    wait_until(lambda: gateway.components.manager.connected, what="Temporal up")
    planner.push(answer("PLAN v1"), answer("PLAN v2"))
    critic.push(Reply(delay=60.0), answer("CRIT"))  # the first critique hangs until its worker dies
    first = worker("first")
    second: subprocess.Popen[bytes] | None = None
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                f"{gateway.v1}/plan",
                timeout=120,
                json={
                    "request": {"messages": [{"role": "user", "content": "Plan a picnic."}]},
                    "orchestration": {
                        "mode": "adversarial",
                        "primary_model_id": "planner",
                        "review_model_id": "critic",
                    },
                },
            )
            wait_until(lambda: len(critic.requests) == 1, timeout=60, what="the critique phase to start")
            first.kill()
            first.wait(10)
            second = worker("second")
            response = pending.result(timeout=120)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    assert response.status_code == 200, response.text
    assert response.headers["x-tokenhub-dispatch"] == "temporal"
    assert response.json()["response"] == {
        "initial_plan": "PLAN v1",
        "critique": "CRIT",
        "refined_plan": "PLAN v2",
    }
    assert len(planner.requests) == 2  # plan and refine: the finished plan phase was not repeated
    assert len(critic.requests) == 2  # the critique lost with its worker was made again


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"orchestration": {"mode": "refine", "iterations": 11}}, 400, "orchestration.iterations"),
        ({"orchestration": {"mode": "debate"}}, 400, "orchestration.mode"),
        ({"orchestration": {"mode": "adversarial", "primary_model_id": "nope"}}, 404, "model"),
        ({"orchestration": {"mode": "vote", "review_model_id": "nope"}}, 404, "model"),
        (
            {"request": {"messages": [{"role": "user", "content": "x"}], "stream": True}},
            400,
            "request.stream",
        ),
        ({"request": {"messages": []}}, 400, "request.messages"),
        ({"output_format": {"type": "markdown"}}, 400, "output_format.type"),
        (
            {"orchestration": {"mode": "refine", "output_schema": "{not json"}},
            400,
            "orchestration.output_schema",
        ),
    ],
)
def test_a_bad_plan_is_refused_before_any_model_is_asked(
    orchestra: Orchestra, change: dict[str, Any], status: int, param: str
) -> None:
    body = {"request": {"messages": [{"role": "user", "content": "Plan."}]}, "orchestration": {}, **change}
    response = httpx.post(f"{orchestra.gateway.v1}/plan", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    assert all(not fake.requests for fake in orchestra.fakes.values())


def test_a_schema_given_in_output_format_is_enforced_on_the_plan(orchestra: Orchestra) -> None:
    orchestra.fakes["planner"].push(answer("PLAN"))
    body = {
        "request": {"messages": [{"role": "user", "content": "Plan."}]},
        "orchestration": {"mode": "adversarial", "return_plan_only": True, "primary_model_id": "planner"},
        "output_format": {"schema": '{"type": "object", "required": ["budget"]}'},
    }
    response = httpx.post(f"{orchestra.gateway.v1}/plan", json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert "'budget' is a required property" in response.json()["error"]["message"]


def test_voters_are_asked_at_the_same_time(orchestra: Orchestra) -> None:
    """Each voter holds its answer for 3 s: asked one after another, the second would hear nothing for 3 s;
    asked together, all three are waiting at once."""
    fakes = orchestra.fakes
    for voter in ("planner", "critic", "third"):
        fakes[voter].push(Reply(body=completion(f"from {voter}", usage=USAGE), delay=3.0))
    fakes["judge"].push(answer("1"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        voting = pool.submit(orchestra.plan, {"mode": "vote", "iterations": 3, "review_model_id": "judge"})
        wait_until(
            lambda: all(fakes[v].requests for v in ("planner", "critic", "third")),
            timeout=2.5,
            what="all three voters asked before the first one answered",
        )
        assert voting.result(timeout=60).status_code == 200
