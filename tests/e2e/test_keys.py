"""API keys over HTTP: who may call what, with which models; secrets shown once and stored hashed; rotation,
revocation and expiry taking effect on the next request; bad keys and bad admin bodies refused cleanly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.admin_client import ADMIN, SECRET, Admin
from tests.conftest import sdk_client, wait_until
from tests.fakes.openai_upstream import FakeOpenAI

CATALOG = """
providers:
  - {{id: first, type: openai, base_url: "{url}"}}
models:
  - {{id: m1, provider_id: first, weight: 5, input_per_1k: 1.0, output_per_1k: 2.0}}
  - {{id: m2, provider_id: first, weight: 9, input_per_1k: 1.0, output_per_1k: 2.0}}
"""
HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}
PLAN = {"request": {"messages": [{"role": "user", "content": "Plan a picnic."}]}}


@pytest.fixture
def admin(fake_openai: tuple[FakeOpenAI, str], start_gateway: Any) -> Admin:
    _, url = fake_openai
    return Admin(start_gateway(CATALOG.format(url=url), admin_token=ADMIN, secret_key=SECRET))


def call(admin: Admin, method: str, path: str, headers: dict[str, str], body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{admin.gateway.url}{path}", json=body, headers=headers, timeout=20)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert response.headers["x-should-retry"] == "false"


def test_requests_are_open_until_the_first_key_exists_then_each_needs_a_live_one(admin: Admin) -> None:
    assert admin.chat().status_code == 200
    secret = admin.create_key()["key"]

    assert_refused(admin.chat(), 401, "invalid_api_key")
    assert_refused(admin.chat(key="th-not-a-real-key"), 401, "invalid_api_key")
    assert admin.chat(key=secret).status_code == 200
    by_header = call(admin, "POST", "/v1/chat/completions", {"x-api-key": secret}, {"model": "m1", **HELLO})
    assert by_header.status_code == 200
    # Probes and the admin API keep their own rules.
    assert httpx.get(f"{admin.gateway.url}/healthz", timeout=5).status_code == 200
    assert admin.get("/keys").status_code == 200


def test_the_secret_is_shown_once_and_never_stored_or_listed(admin: Admin) -> None:
    created = admin.create_key(name="ci", scopes=["chat"], rpm=100)
    secret = created["key"]
    assert secret.startswith("th-") and len(secret) >= 40
    assert created["prefix"] == secret[:11] and created["scopes"] == ["chat"] and created["rpm"] == 100

    listed = admin.get("/keys").json()["items"]
    shown = admin.get(f"/keys/{created['id']}").json()
    for entry in (listed[0], shown):
        assert entry["id"] == created["id"] and entry["prefix"] == secret[:11]
        assert "key" not in entry and secret not in str(entry) and "hash" not in str(entry)
    admin.gateway.stop()
    stored = admin.gateway.db_path.read_bytes()
    assert secret.encode() not in stored and secret[11:].encode() not in stored


def test_requests_are_attributed_to_their_key(admin: Admin) -> None:
    created = admin.create_key()
    assert admin.get(f"/keys/{created['id']}").json()["last_used_at"] is None
    assert admin.chat("m1", key=created["key"]).status_code == 200

    shown = admin.get(f"/keys/{created['id']}").json()
    assert shown["last_used_at"] is not None
    wait_until(lambda: admin.get(f"/keys/{created['id']}").json()["spend_usd"] > 0, what="spend logged")
    admin.gateway.stop()
    (row,) = admin.gateway.request_logs()
    assert row["api_key_id"] == created["id"]


def test_revocation_takes_effect_on_the_next_request(admin: Admin) -> None:
    created = admin.create_key()
    assert admin.chat(key=created["key"]).status_code == 200

    assert admin.send("DELETE", f"/keys/{created['id']}").status_code == 204
    assert_refused(admin.chat(key=created["key"]), 401, "invalid_api_key")
    assert admin.get(f"/keys/{created['id']}").json()["revoked_at"] is not None


def test_a_rotated_key_keeps_its_old_secret_for_the_grace_period_only(admin: Admin) -> None:
    created = admin.create_key()
    first = created["key"]

    rotated = admin.send("POST", f"/keys/{created['id']}/rotate", {"grace_seconds": 3600}).json()
    second = rotated["key"]
    assert second != first and rotated["prefix"] == second[:11]
    assert admin.chat(key=first).status_code == 200 and admin.chat(key=second).status_code == 200

    third = admin.send("POST", f"/keys/{created['id']}/rotate", {"grace_seconds": 0}).json()["key"]
    assert_refused(admin.chat(key=second), 401, "invalid_api_key")
    assert_refused(admin.chat(key=first), 401, "invalid_api_key")  # only the latest old secret has grace
    assert admin.chat(key=third).status_code == 200

    fourth = admin.send("POST", f"/keys/{created['id']}/rotate", {"grace_seconds": 1}).json()["key"]
    assert admin.chat(key=third).status_code == 200
    wait_until(lambda: admin.chat(key=third).status_code == 401, timeout=10, what="the grace to end")
    assert admin.chat(key=fourth).status_code == 200


def test_an_expired_key_is_refused(admin: Admin) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    created = admin.create_key(expires_at=soon)
    assert admin.chat(key=created["key"]).status_code == 200
    wait_until(lambda: admin.chat(key=created["key"]).status_code == 401, timeout=10, what="expiry")


def test_each_scope_opens_its_own_endpoints(admin: Admin) -> None:
    planner = bearer(admin.create_key(scopes=["plan"])["key"])
    chatter = bearer(admin.create_key(scopes=["chat", "models"])["key"])

    assert call(admin, "POST", "/v1/plan", planner, PLAN).status_code == 200
    assert_refused(
        call(admin, "POST", "/v1/chat/completions", planner, {"model": "m1", **HELLO}),
        403,
        "insufficient_scope",
    )
    assert_refused(call(admin, "POST", "/v1/chat", planner, {"request": HELLO}), 403, "insufficient_scope")
    assert_refused(call(admin, "GET", "/v1/models", planner), 403, "insufficient_scope")
    assert_refused(call(admin, "GET", "/v1/models/m1", planner), 403, "insufficient_scope")

    assert call(admin, "POST", "/v1/chat/completions", chatter, {"model": "m1", **HELLO}).status_code == 200
    assert call(admin, "POST", "/v1/chat", chatter, {"request": HELLO}).status_code == 200
    assert call(admin, "GET", "/v1/models", chatter).status_code == 200
    assert_refused(call(admin, "POST", "/v1/plan", chatter, PLAN), 403, "insufficient_scope")


def test_a_key_sees_and_reaches_only_its_models(admin: Admin) -> None:
    secret = admin.create_key(models=["m1"])["key"]
    client = sdk_client(f"{admin.gateway.url}/v1", api_key=secret)

    assert [m.id for m in client.models.list()] == ["m1"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("m2")
    # m2 outweighs m1, but "auto" picks among the key's models only.
    routed = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO["messages"])
    assert routed.headers["x-tokenhub-model"] == "m1"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="m2", messages=HELLO["messages"])
    assert refused.value.code == "model_not_allowed"
    assert refused.value.response.headers["x-should-retry"] == "false"


def test_auth_keys_requires_a_key_even_before_any_exists(
    fake_openai: tuple[FakeOpenAI, str], start_gateway: Any
) -> None:
    _, url = fake_openai
    admin = Admin(start_gateway(CATALOG.format(url=url), admin_token=ADMIN, auth="keys"))
    assert_refused(admin.chat(), 401, "invalid_api_key")


def test_auth_none_leaves_the_api_open_even_with_keys_and_says_so_loudly(
    fake_openai: tuple[FakeOpenAI, str], start_replica: Any, tmp_path: Path
) -> None:
    _, url = fake_openai
    replica = start_replica(
        CATALOG.format(url=url),
        f"sqlite:///{tmp_path}/open.db",
        TOKENHUB_AUTH="none",
        TOKENHUB_ADMIN_TOKEN=ADMIN,
    )
    warning = next(line for line in replica.log.read_text().splitlines() if "auth_disabled" in line)
    assert '"level":"warning"' in warning and "TOKENHUB_AUTH=none" in warning
    created = httpx.post(
        f"{replica.url}/admin/v1/keys",
        json={"name": "k"},
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert created.status_code == 201  # a key exists, and still no key is needed
    answer = httpx.post(
        f"{replica.url}/v1/chat/completions",
        json={"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def test_repeated_failures_from_one_address_are_slowed_but_good_keys_still_work(admin: Admin) -> None:
    secret = admin.create_key()["key"]
    statuses = [admin.chat(key=f"th-guess-{i}").status_code for i in range(30)]
    assert statuses == [401] * 30

    limited = admin.chat(key="th-guess-again")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert admin.chat(key=secret).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer"},
        {"authorization": "Bearer th-"},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "th-missing-its-scheme"},
        {"x-api-key": "th-" + "x" * 8000},
        {"authorization": b"Bearer th-\xff\xfe-not-ascii"},
    ],
    ids=["empty-bearer", "bare-prefix", "basic", "no-scheme", "long-key", "non-ascii"],
)
def test_malformed_keys_get_a_clean_401(admin: Admin, headers: dict[str, Any]) -> None:
    admin.create_key()
    response = call(admin, "POST", "/v1/chat/completions", headers, {"model": "m1", **HELLO})
    assert_refused(response, 401, "invalid_api_key")


def test_a_huge_header_is_refused_before_anything_runs(admin: Admin) -> None:
    admin.create_key()
    response = call(admin, "GET", "/v1/models", {"x-api-key": "th-" + "y" * 200_000})
    assert 400 <= response.status_code < 500
    admin.gateway.stop()
    assert admin.gateway.request_logs() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": ["chat"]}, "name"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"name": "k", "scopes": "chat"}, "scopes"),
        ({"name": "k", "scopes": []}, "scopes"),
        ({"name": "k", "scopes": ["admin"]}, "scopes"),
        ({"name": "k", "models": ["no-such-model"]}, "models"),
        ({"name": "k", "budget_usd": "10"}, "budget_usd"),
        ({"name": "k", "budget_usd": -1}, "budget_usd"),
        ({"name": "k", "budget_period": "fortnight"}, "budget_period"),
        ({"name": "k", "rpm": 1.5}, "rpm"),
        ({"name": "k", "rpm": 0}, "rpm"),
        ({"name": "k", "tpm": True}, "tpm"),
        ({"name": "k", "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "k", "secret": "mine"}, "secret"),
        (["name", "k"], "body"),
    ],
)
def test_bad_key_bodies_are_400s_naming_the_field_and_store_nothing(
    admin: Admin, body: Any, field: str
) -> None:
    response = admin.send("POST", "/keys", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith(field) and error["type"] == "invalid_request_error"
    assert admin.get("/keys").json()["items"] == []
    assert [e for e in admin.get("/audit").json()["items"] if e["action"].startswith("key.")] == []
    assert admin.chat().status_code == 200  # still no key: still open


def test_bad_bodies_to_an_existing_key_change_nothing(admin: Admin) -> None:
    created = admin.create_key(rpm=10)
    path = f"/keys/{created['id']}"
    changes: list[dict[str, Any]] = [{"rpm": "lots"}, {"scopes": None}, {"models": "m1"}, {"id": "key_x"}]
    for body in changes:
        assert admin.send("PATCH", path, body).status_code == 400, body
    rotations: list[Any] = [{"grace_seconds": -5}, {"grace_seconds": "1h"}, {"grace_seconds": 10**9}, [1]]
    for body in rotations:
        assert admin.send("POST", f"{path}/rotate", body).status_code == 400, body
    assert admin.get(path).json() == {k: v for k, v in created.items() if k != "key"}
    assert admin.chat(key=created["key"]).status_code == 200
    assert admin.send("DELETE", "/keys/key_missing").status_code == 404


def test_a_changed_key_applies_to_the_next_request(admin: Admin) -> None:
    created = admin.create_key(scopes=["chat"])
    assert_refused(call(admin, "GET", "/v1/models", bearer(created["key"])), 403, "insufficient_scope")

    changed = admin.send("PATCH", f"/keys/{created['id']}", {"scopes": ["chat", "models"], "models": ["m2"]})
    assert changed.status_code == 200 and changed.json()["models"] == ["m2"]
    listed = call(admin, "GET", "/v1/models", bearer(created["key"])).json()["data"]
    assert [m["id"] for m in listed] == ["m2"]


def test_failed_authentications_are_limited_per_address_the_local_proxy_forwards(admin: Admin) -> None:
    """30 failures a minute per client address, then 429. Behind a proxy on the same host, the address
    is the one it forwards in X-Forwarded-For: one client guessing keys must not lock out the others."""
    admin.create_key()
    guesser = {"authorization": "Bearer th-wrong", "x-forwarded-for": "203.0.113.7"}
    for _ in range(30):
        assert_refused(
            call(admin, "POST", "/v1/chat/completions", guesser, {"model": "m1", **HELLO}),
            401,
            "invalid_api_key",
        )
    locked = call(admin, "POST", "/v1/chat/completions", guesser, {"model": "m1", **HELLO})
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(locked.headers["retry-after"]) >= 1
    other = {"authorization": "Bearer th-wrong", "x-forwarded-for": "198.51.100.2"}
    assert_refused(
        call(admin, "POST", "/v1/chat/completions", other, {"model": "m1", **HELLO}), 401, "invalid_api_key"
    )
