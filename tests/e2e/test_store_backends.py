"""The gateway logs to whichever store ``TOKENHUB_DB_URL`` names: a SQLite file, or PostgreSQL."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.databases import BACKENDS, fresh_postgres_database
from tests.fakes.openai_upstream import FakeOpenAI
from tokenhub.config import to_async_db_url
from tokenhub.store import SQLStore

CATALOG = """
providers:
  - {{id: up, type: openai, base_url: "{url}"}}
models:
  - {{id: m1, provider_id: up}}
"""


@pytest.mark.parametrize("backend", BACKENDS)
async def test_each_request_is_logged_once_in_the_configured_store(
    backend: str, fake_openai: tuple[FakeOpenAI, str], start_gateway: Any, tmp_path: Path
) -> None:
    _, url = fake_openai
    async with contextlib.AsyncExitStack() as stack:
        db_url = (
            f"sqlite:///{tmp_path}/store.db"
            if backend == "sqlite"
            else await stack.enter_async_context(fresh_postgres_database())
        )
        gateway = start_gateway(CATALOG.format(url=url), db_url=db_url)
        client = openai.AsyncOpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
        await client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "a"}])
        stream = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "b"}], stream=True
        )
        async for _ in stream:
            pass
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "c"}])
        await client.close()
        gateway.stop()
        store = SQLStore(to_async_db_url(db_url))
        rows = await store.request_logs()
        await store.aclose()
    assert sorted((r.stream, r.status) for r in rows) == [(False, 200), (False, 404), (True, 200)]
