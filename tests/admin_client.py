"""An HTTP client for a gateway under test: its admin API (with the test admin token) and its chat API."""

from __future__ import annotations

from typing import Any

import httpx

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"authorization": f"Bearer {ADMIN}"}
SECRET = "a-secret-key-for-tests-000000000"
HELLO: list[Any] = [{"role": "user", "content": "hello"}]


class Admin:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.base = f"{gateway.url}/admin/v1"

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", params=params, headers=AUTH, timeout=10)

    def send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.request(method, f"{self.base}{path}", json=body, headers=AUTH, timeout=10)

    def get_v1(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.gateway.url}/v1{path}", timeout=10)

    def chat(self, model: str = "auto", key: str | None = None, **extra: Any) -> httpx.Response:
        return httpx.post(
            f"{self.gateway.url}/v1/chat/completions",
            json={"model": model, "messages": HELLO, **extra},
            headers={"authorization": f"Bearer {key}"} if key else {},
            timeout=20,
        )

    def create_key(self, **fields: Any) -> dict[str, Any]:
        """A new key (``name`` defaults to "test"); the response includes its secret as ``key``."""
        response = self.send("POST", "/keys", {"name": "test", **fields})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created
