"""Pure ASGI middleware (no ``BaseHTTPMiddleware``: it hides ``http.disconnect`` and breaks contextvars)."""

from __future__ import annotations

import re
import uuid

import structlog.contextvars
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_VALID_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")


class RequestIdMiddleware:
    """Gives every request an id — the client's ``X-Request-Id`` when it is sane, else a new one —
    binds it to the log context, stores it in ``scope["state"]["request_id"]`` and returns it as
    ``x-request-id`` on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _VALID_ID.match(value):
                    request_id = value.decode("ascii")
                break
        if request_id is None:
            request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id_of(scope: Scope) -> str:
    return str(scope["state"]["request_id"])
