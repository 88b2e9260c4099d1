"""The admin API over HTTP: auth, the catalogue changed live, simulation, health, stats, logs, events."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admin_client import ADMIN, AUTH, SECRET, Admin
from tests.conftest import wait_until
from tests.fakes.openai_upstream import FakeOpenAI, Reply, error_body
from tests.temporal_server import DevServer, free_port
from tokenhub.store import Secrets

CATALOG = """
providers:
  - {{id: first, type: openai, base_url: "{url}"}}
models:
  - {{id: m1, provider_id: first, weight: 5}}
"""


@pytest.fixture
def admin(fake_openai: tuple[FakeOpenAI, str], start_gateway: Any) -> Admin:
    _, url = fake_openai
    return Admin(start_gateway(CATALOG.format(url=url), admin_token=ADMIN, secret_key=SECRET))


ENDPOINTS = [
    ("GET", "/providers"),
    ("POST", "/providers"),
    ("GET", "/providers/first"),
    ("PATCH", "/providers/first"),
    ("DELETE", "/providers/first"),
    ("GET", "/providers/first/models"),
    ("GET", "/models"),
    ("POST", "/models"),
    ("GET", "/models/m1"),
    ("PATCH", "/models/m1"),
    ("DELETE", "/models/m1"),
    ("POST", "/routing/simulate"),
    ("GET", "/health"),
    ("GET", "/stats"),
    ("GET", "/logs"),
    ("GET", "/audit"),
    ("GET", "/events"),
    ("GET", "/temporal"),
    ("PUT", "/temporal"),
    ("GET", "/workflows"),
    ("GET", "/workflows/wf-1"),
    ("GET", "/workflows/wf-1/history"),
    ("GET", "/keys"),
    ("POST", "/keys"),
    ("GET", "/keys/key-1"),
    ("PATCH", "/keys/key-1"),
    ("POST", "/keys/key-1/rotate"),
    ("DELETE", "/keys/key-1"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_needs_the_admin_token(admin: Admin, method: str, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer not-the-token-0123456789"}):
        response = httpx.request(method, f"{admin.base}{path}", headers=headers, timeout=10)
        assert response.status_code == 401, (method, path, response.text)
        assert set(response.json()["error"]) == {"message", "type"}


def test_a_provider_added_through_the_api_serves_the_next_request(
    admin: Admin, make_fake_openai: Any
) -> None:
    second, second_url = make_fake_openai()
    created = admin.send(
        "POST",
        "/providers",
        {
            "id": "second",
            "type": "openai",
            "base_url": f"{second_url}/v1",
            "api_key": "sk-second-provider-key",
        },
    )
    assert created.status_code == 201, created.text
    shown = created.json()
    assert shown["has_api_key"] is True and "sk-second" not in created.text
    assert shown["base_url"] == second_url  # the trailing /v1 is normalised away
    model = admin.send("POST", "/models", {"id": "m2", "provider_id": "second", "weight": 9})
    assert model.status_code == 201, model.text
    response = admin.chat("m2")
    assert response.status_code == 200 and response.headers["x-tokenhub-provider"] == "second"
    assert (
        second.headers[-1]["authorization"] == "Bearer sk-second-provider-key"
    )  # decrypted for the upstream
    assert "sk-second-provider-key" not in admin.get("/providers/second").text
    assert "sk-second-provider-key" not in admin.get("/audit").text


def test_a_disabled_model_is_no_longer_chosen_and_a_deleted_one_is_gone(
    admin: Admin, make_fake_openai: Any
) -> None:
    _, url = make_fake_openai()
    admin.send("POST", "/providers", {"id": "second", "type": "openai", "base_url": url})
    admin.send("POST", "/models", {"id": "m2", "provider_id": "second", "weight": 10})
    assert admin.chat(mode_header := "auto").headers["x-tokenhub-model"] == "m2"
    assert admin.send("PATCH", "/models/m2", {"enabled": False}).json()["enabled"] is False
    assert admin.chat(mode_header).headers["x-tokenhub-model"] == "m1"
    assert admin.chat("m2").status_code == 404
    assert admin.send("DELETE", "/providers/second").status_code == 409  # m2 still names it
    assert admin.send("DELETE", "/models/m2").status_code == 204
    assert admin.send("DELETE", "/providers/second").status_code == 204
    assert admin.get("/providers/second").status_code == 404
    assert [m["id"] for m in httpx.get(f"{admin.gateway.v1}/models", timeout=5).json()["data"]] == ["m1"]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("POST", "/providers", {"id": "x", "type": "gemini", "base_url": "http://h"}, "type"),
        ("POST", "/providers", {"id": "x", "type": "openai"}, "base_url"),
        ("POST", "/providers", {"id": "first", "type": "openai", "base_url": "http://h"}, "exists"),
        ("POST", "/providers", {"id": "x", "type": "openai", "base_url": "http://h", "colour": 1}, "colour"),
        ("POST", "/models", {"id": "m9", "provider_id": "nobody"}, "provider_id"),
        ("POST", "/models", {"id": "m9", "provider_id": "first", "input_per_1k": -1}, "input_per_1k"),
        ("POST", "/models", {"id": "auto", "provider_id": "first"}, "reserved"),
        ("PATCH", "/models/m1", {"weight": 11}, "weight"),
        ("PATCH", "/models/m1", {"id": "renamed"}, "cannot be changed"),
        ("POST", "/routing/simulate", {"mode": "warp"}, "mode"),
    ],
)
def test_bad_bodies_are_400s_naming_the_field(
    admin: Admin, method: str, path: str, body: dict[str, Any], expected: str
) -> None:
    response = admin.send(method, path, body)
    assert response.status_code in (400, 409), response.text
    assert expected in response.json()["error"]["message"]


def test_a_literal_key_is_refused_without_a_secret_key(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    _, url = fake_openai
    admin = Admin(start_gateway(CATALOG.format(url=url), admin_token=ADMIN))
    response = admin.send(
        "POST", "/providers", {"id": "x", "type": "openai", "base_url": url, "api_key": "sk-x"}
    )
    assert response.status_code == 400 and "TOKENHUB_SECRET_KEY" in response.json()["error"]["message"]
    assert (
        admin.send(
            "POST", "/providers", {"id": "x", "type": "openai", "base_url": url, "api_key_env": "PATH"}
        ).status_code
        == 201
    )


def test_lists_page_through_every_item_once(admin: Admin) -> None:
    for i in range(4):
        admin.send("POST", "/models", {"id": f"extra-{i}", "provider_id": "first"})
    seen, cursor = [], None
    while True:
        page = admin.get("/models", limit=2, **({"cursor": cursor} if cursor else {})).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == ["extra-0", "extra-1", "extra-2", "extra-3", "m1"]
    assert admin.get("/models", limit=0).status_code == 400


def test_discovery_lists_the_upstreams_own_models(admin: Admin) -> None:
    response = admin.get("/providers/first/models")
    assert response.json() == {"provider_id": "first", "models": [{"id": "fake-model", "registered": False}]}
    assert admin.get("/providers/nobody/models").status_code == 404


def test_simulation_shows_the_decision_and_the_scores(admin: Admin) -> None:
    admin.send("POST", "/providers", {"id": "sim", "type": "simulated"})
    admin.send("POST", "/models", {"id": "tiny", "provider_id": "sim", "weight": 1, "max_context_tokens": 10})
    admin.send("POST", "/models", {"id": "big", "provider_id": "sim", "weight": 10})
    result = admin.send(
        "POST",
        "/routing/simulate",
        {"mode": "high_confidence", "messages": [{"role": "user", "content": "x" * 200}]},
    ).json()
    assert result["decision"]["model_id"] == "big"
    assert result["eligible"][0]["id"] == "big" and result["eligible"][0]["selected"] is True
    assert result["ineligible"] == {"tiny": "context_window"}
    assert admin.send("POST", "/routing/simulate", {"model": "nope"}).status_code == 404


def test_health_stats_and_logs_follow_real_requests(
    admin: Admin, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, _ = fake_openai
    fake.push(*[Reply(status=503, body=error_body("down"))] * 3)
    assert admin.chat().status_code == 502
    assert admin.chat().status_code == 200
    health = {p["provider_id"]: p for p in admin.get("/health").json()["providers"]}
    assert health["first"]["state"] == "healthy" and health["first"]["error_rate"] > 0
    stats = admin.get("/stats", window="1h").json()
    assert stats["global"]["requests"] == 2 and stats["global"]["errors"] == 1
    assert stats["by_model"]["m1"]["requests"] == 2 and stats["by_path"]["direct"]["requests"] == 2
    assert admin.get("/stats", window="1y").status_code == 400
    wait_until(lambda: len(admin.get("/logs").json()["items"]) == 2, what="logs flushed")
    failed = admin.get("/logs", status=502).json()["items"]
    assert len(failed) == 1 and failed[0]["error_class"] == "transient"
    first = admin.get("/logs", limit=1).json()
    second = admin.get("/logs", limit=1, cursor=first["next_cursor"]).json()
    assert first["items"][0]["id"] != second["items"][0]["id"] and second["next_cursor"] is None
    assert admin.get("/logs", cursor="garbage").status_code == 400


def test_every_change_is_audited_with_who_and_what(admin: Admin) -> None:
    admin.send("PATCH", "/models/m1", {"weight": 7})
    admin.send("PUT", "/temporal", {"enabled": False})
    entries = admin.get("/audit").json()["items"]
    assert [e["action"] for e in entries] == ["temporal.set", "model.update"]
    assert entries[1]["target"] == "m1" and entries[1]["detail"] == {"weight": 7}
    assert entries[0]["actor"].startswith("admin-") and ADMIN not in json.dumps(entries)


def read_events(admin: Admin, wanted: str, trigger: Any, match: Any = None) -> dict[str, Any]:
    """Open the event stream, run ``trigger``, return the first ``wanted`` event's data (that ``match``es)."""
    found: dict[str, Any] = {}
    done = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{admin.base}/events", headers=AUTH, timeout=30) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in response.iter_lines():
                if line == ": connected":
                    done.set()  # subscribed: the trigger may run
                elif line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind == wanted:
                    data = json.loads(line.removeprefix("data: "))
                    if match is None or match(data):
                        found.update(data)
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert done.wait(10), "the event stream did not open"
    trigger()
    listener.join(30)
    assert found, f"no {wanted} event"
    return found


def test_an_idle_event_stream_carries_keep_alive_comments(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    _, url = fake_openai
    gateway = start_gateway(CATALOG.format(url=url), admin_token=ADMIN, admin_events_keepalive_ms=100)
    lines: list[str] = []
    with httpx.stream("GET", f"{gateway.url}/admin/v1/events", headers=AUTH, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            lines.append(line)
            if sum(line.startswith(": ping") for line in lines) == 3:
                break
    assert lines[0] == ": connected"
    assert not [
        line for line in lines if line and not line.startswith(":")
    ]  # nothing happened: comments only


def test_the_event_stream_delivers_request_events(admin: Admin) -> None:
    event = read_events(admin, "route_success", admin.chat)
    assert event["model"] == "m1" and event["status"] == 200 and event["type"] == "route_success"


def test_the_event_stream_reports_the_breaker_opening_when_temporal_dies(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any, tmp_path: Path
) -> None:
    _, url = fake_openai
    server = DevServer(tmp_path / "temporal", port=free_port()).start()
    try:
        gateway = start_gateway(
            CATALOG.format(url=url),
            admin_token=ADMIN,
            temporal_enabled=True,
            temporal_host=server.host,
            temporal_task_queue=f"tq-{uuid.uuid4().hex}",
        )
        manager = gateway.components.manager
        wait_until(lambda: manager.connected and manager.worker_running, what="Temporal up")
        admin = Admin(gateway)

        def kill_and_ask() -> None:
            server.kill()
            for _ in range(3):
                admin.chat()

        event = read_events(admin, "breaker_change", kill_and_ask)
        assert event["new_state"] == "open"
    finally:
        server.stop()


def test_a_separate_worker_serves_a_provider_added_through_the_api_and_its_events_reach_the_stream(
    fake_openai: tuple[FakeOpenAI, str],
    make_fake_openai: Any,
    start_gateway: Any,
    temporal_server: DevServer,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    _, url = fake_openai
    second, second_url = make_fake_openai()
    queue, db_url = f"tq-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/shared.db"
    catalog = CATALOG.format(url=url)
    gateway = start_gateway(
        catalog,
        admin_token=ADMIN,
        secret_key=SECRET,
        db_url=db_url,
        temporal_enabled=True,
        temporal_host=temporal_server.host,
        temporal_task_queue=queue,
        temporal_worker=False,
        temporal_pickup_timeout_ms=20_000,
    )
    admin = Admin(gateway)
    worker = start_worker(catalog, queue, db_url, TOKENHUB_SECRET_KEY=SECRET, TOKENHUB_CATALOG_POLL_MS="100")
    wait_until(
        lambda: admin.chat().headers["x-tokenhub-dispatch"] == "temporal",
        timeout=60,
        what="the worker process serving",
    )
    admin.send(
        "POST",
        "/providers",
        {"id": "second", "type": "openai", "base_url": second_url, "api_key": "sk-only-in-the-store"},
    )
    admin.send("POST", "/models", {"id": "m2", "provider_id": "second", "weight": 9})

    def ask_the_new_model() -> None:
        wait_until(lambda: admin.chat("m2").status_code == 200, timeout=30, what="m2 served")

    event = read_events(admin, "route_success", ask_the_new_model, match=lambda data: data["model"] == "m2")
    assert event["model"] == "m2" and event["source"] != ""  # from the worker process, through the store
    assert second.requests and second.headers[-1]["authorization"] == "Bearer sk-only-in-the-store"
    # Disabled through the API: the worker process stops choosing it too.
    admin.send("PATCH", "/models/m2", {"enabled": False})
    wait_until(lambda: admin.chat("m2").status_code == 404, timeout=30, what="m2 retired everywhere")
    served = admin.chat()
    assert served.headers["x-tokenhub-dispatch"] == "temporal" and served.headers["x-tokenhub-model"] == "m1"
    # The worker used the key for every call to "second" and logged each of them: never the key itself.
    assert worker.stop() == 0
    assert "second" in worker.log.read_text() and "sk-only-in-the-store" not in worker.log.read_text()


def test_the_provider_list_shows_every_provider_without_secrets(admin: Admin) -> None:
    created = admin.send(
        "POST",
        "/providers",
        {"id": "keyed", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-list-secret"},
    )
    assert created.status_code == 201, created.text
    admin.send("POST", "/providers", {"id": "sim", "type": "simulated", "enabled": False})
    response = admin.get("/providers")
    assert response.status_code == 200 and "sk-list-secret" not in response.text
    listed = response.json()
    assert listed["next_cursor"] is None
    shown = {p["id"]: p for p in listed["items"]}
    assert sorted(shown) == ["first", "keyed", "sim"]
    assert shown["first"]["type"] == "openai" and shown["first"]["has_api_key"] is False
    assert shown["first"]["enabled"] is True and shown["first"]["usable"] is True
    assert shown["keyed"]["base_url"] == "http://127.0.0.1:9" and shown["keyed"]["has_api_key"] is True
    assert shown["sim"]["type"] == "simulated" and shown["sim"]["enabled"] is False
    assert shown["sim"]["usable"] is False  # disabled: nothing can reach it
    assert all("api_key" not in p and "api_key_encrypted" not in p for p in shown.values())


def test_a_patched_provider_shows_the_change_and_routes_by_it(
    admin: Admin, fake_openai: tuple[FakeOpenAI, str], make_fake_openai: Any
) -> None:
    old, _ = fake_openai
    new, new_url = make_fake_openai()
    assert admin.chat("m1").status_code == 200 and len(old.requests) == 1
    patched = admin.send("PATCH", "/providers/first", {"base_url": f"{new_url}/v1"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["base_url"] == new_url and patched.json()["type"] == "openai"  # the rest is kept
    assert admin.get("/providers/first").json()["base_url"] == new_url
    response = admin.chat("m1")
    assert response.status_code == 200 and response.headers["x-tokenhub-provider"] == "first"
    assert len(new.requests) == 1 and len(old.requests) == 1  # the new address served it, the old did not
    disabled = admin.send("PATCH", "/providers/first", {"enabled": False})
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    assert admin.get("/providers/first").json()["usable"] is False
    refused = admin.chat("m1")  # its only model is not routable any more
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert admin.send("POST", "/routing/simulate", {}).json()["decision"] is None
    assert len(new.requests) == 1 and len(old.requests) == 1
    assert admin.send("PATCH", "/providers/first", {"enabled": True}).status_code == 200
    assert admin.chat("m1").status_code == 200 and len(new.requests) == 2
    assert [e["action"] for e in admin.get("/audit").json()["items"]] == ["provider.update"] * 3
    assert admin.send("PATCH", "/providers/nobody", {"enabled": False}).status_code == 404
    assert admin.send("PATCH", "/providers/first", {"id": "renamed"}).status_code == 400


def page_through(admin: Admin, path: str, limit: int) -> list[list[Any]]:
    """Every page of ``path`` at ``limit`` items a page, following ``next_cursor`` until it is null."""
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        response = admin.get(path, limit=limit, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= limit
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, f"{path} never stops paging"


@pytest.mark.parametrize("limit", [1, 2])
def test_providers_page_through_every_item_once(admin: Admin, limit: int) -> None:
    for i in range(4):
        admin.send("POST", "/providers", {"id": f"extra-{i}", "type": "simulated"})
    pages = page_through(admin, "/providers", limit)
    seen = [p["id"] for items in pages for p in items]
    assert seen == ["extra-0", "extra-1", "extra-2", "extra-3", "first"]  # each once, in id order
    assert len(pages) == -(-5 // limit)
    assert admin.get("/providers", limit=0).status_code == 400
    assert admin.get("/providers", cursor="-1").status_code == 400


@pytest.mark.parametrize("limit", [1, 2])
def test_the_audit_log_pages_through_every_entry_once_newest_first(admin: Admin, limit: int) -> None:
    for weight in range(5):
        assert admin.send("PATCH", "/models/m1", {"weight": weight}).status_code == 200
    pages = page_through(admin, "/audit", limit)
    entries = [e for items in pages for e in items]
    assert [e["detail"] for e in entries] == [{"weight": w} for w in (4, 3, 2, 1, 0)]
    assert len({e["id"] for e in entries}) == 5
    assert all(items for items in pages[:-1])  # only the last page may be empty
    assert admin.get("/audit", cursor="garbage").status_code == 400


@pytest.mark.parametrize("limit", [1, 2])
def test_keys_page_through_every_key_once(admin: Admin, limit: int) -> None:
    created = [admin.create_key(name=f"key-{i}")["id"] for i in range(5)]
    admin.send("DELETE", f"/keys/{created[1]}")  # a revoked key is still listed
    pages = page_through(admin, "/keys", limit)
    seen = [k["id"] for items in pages for k in items]
    assert seen == created  # each once, oldest first
    assert len(pages) == -(-5 // limit)
    assert all("key" not in k and "hash" not in k for items in pages for k in items)
    assert admin.get("/keys", limit=201).status_code == 400


def test_a_provider_key_given_through_the_api_is_stored_encrypted(admin: Admin) -> None:
    literal = f"sk-plain-{uuid.uuid4().hex}"
    created = admin.send(
        "POST",
        "/providers",
        {"id": "keyed", "type": "openai", "base_url": "http://127.0.0.1:9", "api_key": literal},
    )
    assert created.status_code == 201, created.text
    gateway = admin.gateway
    with sqlite3.connect(gateway.db_path) as conn:
        (stored,) = conn.execute("SELECT api_key_encrypted FROM providers WHERE id = 'keyed'").fetchone()
    assert stored and literal not in stored
    assert Secrets(SECRET).decrypt(stored) == literal  # the row holds the key, encrypted with the secret key
    gateway.stop()  # every write has landed
    files = [p for p in gateway.db_path.parent.iterdir() if p.name.startswith(gateway.db_path.name)]
    contents = b"".join(p.read_bytes() for p in files)
    assert gateway.db_path in files and b"keyed" in contents
    for form in (literal, literal[len("sk-plain-") :]):
        assert form.encode() not in contents, f"the key is in {[p.name for p in files]} in plain text"


def test_a_subscriber_that_never_reads_is_dropped_while_requests_go_on(admin: Admin) -> None:
    bus = admin.gateway.components.events
    assert not bus.watched
    # Small socket buffers both ways (accepted sockets take the listening socket's), so that a reader that
    # stops reading holds the stream up after tens of kilobytes rather than megabytes.
    admin.gateway.server._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    port = admin.gateway.server.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills quickly
        slow.settimeout(10)
        slow.connect(("127.0.0.1", port))
        request = f"GET /admin/v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ADMIN}\r\n\r\n"
        slow.sendall(request.encode())
        received = b""
        while b": connected" not in received:
            chunk = slow.recv(4096)
            assert chunk, f"the event stream closed: {received!r}"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200") and bus.watched
        # From here on the subscriber reads nothing. Every request still completes, and once its buffers
        # are full the gateway drops it instead of waiting for it.
        served = 0
        with httpx.Client(base_url=admin.gateway.v1, timeout=20) as client:
            while bus.watched:
                response = client.post(
                    "/chat/completions",
                    json={"model": "m1", "messages": [{"role": "user", "content": "hello"}]},
                    headers={"x-request-id": f"slow-subscriber-{served:06d}-" + "x" * 100},
                )
                assert response.status_code == 200, response.text
                served += 1
                assert served < 5_000, "the subscriber that never reads was never dropped"
    assert served > 256  # it was dropped for falling behind, not before any event was queued
    event = read_events(admin, "route_success", admin.chat)  # a new subscriber is served as before
    assert event["model"] == "m1"
