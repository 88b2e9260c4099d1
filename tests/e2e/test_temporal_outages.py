"""Temporal down, dying, or coming back: the gateway keeps answering, and logs each request once."""

from __future__ import annotations

import concurrent.futures
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import wait_until
from tests.e2e.test_temporal_dispatch import ADMIN, BODY, CATALOG, admin_status, post
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.temporal_server import DevServer, free_port


def settings_for(host: str, **extra: Any) -> dict[str, Any]:
    return {
        "temporal_enabled": True,
        "temporal_host": host,
        "admin_token": ADMIN,
        "temporal_task_queue": f"tq-{uuid.uuid4().hex}",
        "temporal_breaker_cooldown_ms": 500,
        **extra,
    }


def test_temporal_down_at_start_up_then_up_is_used_without_a_restart(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any, tmp_path: Path
) -> None:
    _, url = fake_openai
    server = DevServer(tmp_path / "temporal", port=free_port())
    gateway = start_gateway(CATALOG.format(url=url), **settings_for(server.host))
    response = post(gateway)
    assert response.status_code == 200
    assert response.headers["x-tokenhub-dispatch"] == "direct"
    status = admin_status(gateway)
    assert status["fallbacks"] == {"not_connected": 1}
    assert (status["enabled"], status["connected"], status["worker_running"]) == (True, False, False)
    server.start()
    try:
        manager = gateway.components.manager
        wait_until(lambda: manager.connected and manager.worker_running, timeout=30, what="reconnect")
        status = admin_status(gateway)
        assert (status["connected"], status["worker_running"], status["breaker"]) == (True, True, "closed")
        settings = gateway.components.settings
        assert (status["host"], status["namespace"], status["task_queue"]) == (
            server.host,
            settings.temporal_namespace,
            settings.temporal_task_queue,
        )
        later = post(gateway)
        assert later.status_code == 200
        assert later.headers["x-tokenhub-dispatch"] == "temporal"
    finally:
        server.stop()


def test_temporal_killed_with_requests_in_flight(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any, tmp_path: Path
) -> None:
    fake, url = fake_openai
    server = DevServer(tmp_path / "temporal", port=free_port()).start()
    try:
        gateway = start_gateway(CATALOG.format(url=url), **settings_for(server.host))
        manager = gateway.components.manager
        wait_until(lambda: manager.connected and manager.worker_running, what="Temporal up")
        assert post(gateway).headers["x-tokenhub-dispatch"] == "temporal"
        # Every upstream answer takes a moment, so the kill lands while requests are inside workflows.
        fake.default = Reply(delay=0.6)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            in_flight = [pool.submit(post, gateway) for _ in range(6)]
            wait_until(lambda: len(fake.requests) >= 4, what="requests in flight")
            server.kill()
            after_kill = [pool.submit(post, gateway) for _ in range(6)]
            answers = [f.result(timeout=60) for f in in_flight + after_kill]
        # None hangs past its bound, each gets an answer (these have a healthy upstream to fall back to).
        assert [a.status_code for a in answers] == [200] * 12
        assert gateway.components.breaker.state in ("open", "half_open")
        fallbacks = admin_status(gateway)["fallbacks"]
        assert sum(fallbacks.values()) >= 3
        # The upstream is asked once per request, except when Temporal was lost after ChatActivity began:
        # then the fallback may ask again, and that case is counted as result_lost.
        assert 13 <= len(fake.requests) <= 13 + fallbacks.get("result_lost", 0)
        metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
        for reason, count in fallbacks.items():
            assert f'tokenhub_temporal_fallback_total{{reason="{reason}"}} {float(count)}' in metrics
        direct = sum(a.headers["x-tokenhub-dispatch"] == "direct" for a in answers)
        assert direct >= 3 and f'tokenhub_dispatch_total{{path="direct"}} {float(direct)}' in metrics

        server.start()
        fake.default = None
        wait_until(lambda: manager.connected, timeout=30, what="reconnect")
        wait_until(
            lambda: post(gateway).headers["x-tokenhub-dispatch"] == "temporal",
            timeout=30,
            what="requests back on Temporal",
        )
        assert gateway.components.breaker.state == "closed"
        gateway.stop()
        ids = Counter(row["request_id"] for row in gateway.request_logs())
        assert all(count == 1 for count in ids.values()), f"logged twice: {ids.most_common(3)}"
        assert {a.headers["x-request-id"] for a in answers} <= set(ids)
    finally:
        server.stop()


def test_a_separate_worker_process_serves_a_gateway_without_one(
    fake_openai: tuple[FakeOpenAI, str],
    start_gateway: Any,
    start_worker: Any,
    temporal_server: DevServer,
    tmp_path: Path,
) -> None:
    fake, url = fake_openai
    db_url = f"sqlite:///{tmp_path}/shared.db"
    settings = settings_for(temporal_server.host, temporal_worker=False, db_url=db_url)
    worker = start_worker(CATALOG.format(url=url), settings["temporal_task_queue"], db_url)
    try:
        gateway = start_gateway(CATALOG.format(url=url), **settings)
        wait_until(lambda: gateway.components.manager.connected, what="Temporal up")
        assert not gateway.components.manager.worker_running
        response = post(gateway)  # the worker process may still be starting: the pickup bound covers it
        wait_until(
            lambda: post(gateway).headers["x-tokenhub-dispatch"] == "temporal",
            timeout=30,
            what="the worker process picking up workflows",
        )
        durable = post(gateway, {**BODY, "temperature": 0.1})
        assert durable.status_code == 200 and durable.headers["x-tokenhub-dispatch"] == "temporal"
        assert fake.requests[-1]["temperature"] == 0.1  # the worker process made the upstream call
        assert response.status_code == 200
        # SIGTERM while the worker is inside a call: it finishes the call before it stops.
        fake.default = Reply(delay=1.5)
        asked = len(fake.requests)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            draining = pool.submit(post, gateway, {**BODY, "temperature": 0.2})
            wait_until(lambda: len(fake.requests) > asked, what="the slow call under way")
            worker.process.send_signal(signal.SIGTERM)
            drained = draining.result(timeout=60)
        assert drained.status_code == 200 and drained.headers["x-tokenhub-dispatch"] == "temporal"
        assert len(fake.requests) == asked + 1  # answered by the draining worker, not asked again
    finally:
        code = worker.stop()
    assert code == 0, worker.log.read_text()
    gateway.stop()
    rows = gateway.request_logs()
    assert durable.headers["x-request-id"] in {r["request_id"] for r in rows if r["path"] == "temporal"}
