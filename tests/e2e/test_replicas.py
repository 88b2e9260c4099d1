"""Two gateway processes sharing one database: what is changed through one replica's admin API — the
Temporal flag, the catalogue, keys — the other follows within its poll interval; limits on PostgreSQL are
shared, on SQLite each process keeps its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.admin_client import ADMIN, Admin
from tests.conftest import Replica, wait_until
from tests.databases import BACKENDS, database_url
from tests.fakes.openai_upstream import FakeOpenAI
from tests.temporal_server import free_port

CATALOG = """
providers:
  - {id: first, type: openai, base_url: "URL"}
models:
  - {id: m1, provider_id: first, weight: 5}
"""
# Every replica polls the store every 100 ms (start_replica); these bounds are generous multiples of that.
SEEN_WITHIN_S = 5.0


@pytest.fixture(params=BACKENDS)
async def replicas(
    request: pytest.FixtureRequest, fake_openai: tuple[FakeOpenAI, str], start_replica: Any, tmp_path: Path
) -> AsyncIterator[tuple[Admin, Admin]]:
    _, url = fake_openai
    # Temporal is nowhere to be found: the flag can still be flipped, and requests fall back to the engine.
    closed = f"127.0.0.1:{free_port()}"
    async with database_url(request.param, tmp_path) as db_url:
        started: list[Replica] = [
            start_replica(
                CATALOG.replace("URL", url), db_url, TOKENHUB_ADMIN_TOKEN=ADMIN, TOKENHUB_TEMPORAL_HOST=closed
            )
            for _ in range(2)
        ]
        yield Admin(started[0]), Admin(started[1])


def test_the_temporal_flag_set_through_one_replica_is_followed_by_the_other(
    replicas: tuple[Admin, Admin],
) -> None:
    first, second = replicas
    assert second.get("/temporal").json()["enabled"] is False

    assert first.send("PUT", "/temporal", {"enabled": True}).status_code == 200
    wait_until(lambda: second.get("/temporal").json()["enabled"] is True, SEEN_WITHIN_S, "the flag on")
    # Temporal is unreachable: the flag is on, and the request is still answered, directly.
    assert second.chat().headers["x-tokenhub-dispatch"] == "direct"

    assert first.send("PUT", "/temporal", {"enabled": False}).status_code == 200
    wait_until(lambda: second.get("/temporal").json()["enabled"] is False, SEEN_WITHIN_S, "the flag off")


def test_a_model_added_through_one_replica_is_served_by_the_other(
    replicas: tuple[Admin, Admin], make_fake_openai: Any
) -> None:
    first, second = replicas
    fake, url = make_fake_openai()
    assert (
        first.send("POST", "/providers", {"id": "second", "type": "openai", "base_url": url}).status_code
        == 201
    )
    assert (
        first.send("POST", "/models", {"id": "m2", "provider_id": "second", "weight": 9}).status_code == 201
    )

    wait_until(lambda: second.chat("m2").status_code == 200, SEEN_WITHIN_S, "m2 on the other replica")
    assert fake.requests


def test_a_key_revoked_through_one_replica_is_refused_by_the_other(replicas: tuple[Admin, Admin]) -> None:
    first, second = replicas
    created = first.create_key()
    wait_until(lambda: second.chat(key=created["key"]).status_code == 200, SEEN_WITHIN_S, "the key there")

    assert first.send("DELETE", f"/keys/{created['id']}").status_code == 204
    wait_until(lambda: second.chat(key=created["key"]).status_code == 401, SEEN_WITHIN_S, "the revocation")


def test_each_replica_logs_its_own_requests_and_either_shows_them_all(replicas: tuple[Admin, Admin]) -> None:
    first, second = replicas
    ids = [admin.chat().headers["x-request-id"] for admin in (first, second, first)]

    def logged() -> list[str]:
        return sorted(row["request_id"] for row in second.get("/logs", limit=50).json()["items"])

    wait_until(lambda: logged() == sorted(ids), SEEN_WITHIN_S, "every request in the shared logs")


def test_request_limits_are_shared_on_postgresql_and_per_process_on_sqlite(
    replicas: tuple[Admin, Admin], request: pytest.FixtureRequest
) -> None:
    first, second = replicas
    created = first.create_key(rpm=4)
    wait_until(lambda: second.get_v1("/models").status_code == 401, SEEN_WITHIN_S, "keys required there")

    statuses = [admin.chat(key=created["key"]).status_code for admin in (first, second) * 3]
    if "postgresql" in request.node.callspec.id:
        assert statuses == [200, 200, 200, 200, 429, 429]  # four a minute, whichever replica answers
    else:
        assert statuses == [200] * 6  # each process allows four
        assert [admin.chat(key=created["key"]).status_code for admin in (first, second)] == [200, 200]
        assert [admin.chat(key=created["key"]).status_code for admin in (first, second)] == [429, 429]
