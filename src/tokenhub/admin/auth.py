"""Admin authentication: ``Authorization: Bearer $TOKENHUB_ADMIN_TOKEN``, compared in constant time.

With no token configured the admin API refuses every request: it is never open by default.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send


class AdminAuth:
    """Pure ASGI middleware guarding the admin routes it wraps."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self._actor = "admin-" + hashlib.sha256(self._token).hexdigest()[:8] if self._token else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._token is None:
            await _refuse(send, 403, "The admin API is disabled: set TOKENHUB_ADMIN_TOKEN to enable it.")
            return
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credentials.strip()
                break
        if not hmac.compare_digest(presented, self._token):
            await _refuse(send, 401, "Missing or invalid admin token (Authorization: Bearer <token>).")
            return
        # Who made a change, for the audit log: the token's id, never the token.
        scope.setdefault("state", {})["admin_actor"] = self._actor
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, message: str) -> None:
    kind = "authentication_error" if status == 401 else "permission_error"
    body = orjson.dumps({"error": {"message": message, "type": kind}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
