"""Pure ASGI middleware (no ``BaseHTTPMiddleware``: it hides ``http.disconnect`` and breaks contextvars)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenhub.engine.upstream_time import start_clock
from tokenhub.gateway.errors import reply_for
from tokenhub.telemetry import Metrics
from tokenhub.telemetry.ids import ordered_id
from tokenhub.telemetry.logging import REQUEST_ID

_VALID_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")
_DISPATCH = b"x-tokenhub-dispatch"
log = structlog.get_logger(__name__)


class RequestMiddleware:
    """What every request gets first and last, and the answer to what escapes the app.

    An id — the client's ``X-Request-Id`` when it is sane, else a new one — bound to the log context,
    stored in ``scope["state"]["request_id"]`` and returned as ``x-request-id``. And the gateway's own time:
    ``x-tokenhub-overhead-ms`` is the time from here to the response's start minus what the request waited
    on upstreams (the first token, for streams); for dispatched requests it is also observed in the
    ``tokenhub_overhead_ms`` histogram, by dispatch path. An exception that escapes before the response
    started is logged and answered with the error table's reply (an opaque 500 for the unknown).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        clock = start_clock()
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _VALID_ID.match(value):
                    request_id = value.decode("ascii")
                break
        if request_id is None:
            request_id = f"req_{ordered_id()}"  # 32 hex digits as uuid4().hex, the time first
        scope.setdefault("state", {})["request_id"] = request_id
        REQUEST_ID.set(request_id)  # for the log lines written while it runs
        id_header = (b"x-request-id", request_id.encode("ascii"))
        started_response = False

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                nonlocal started_response
                started_response = True
                overhead_ms = max(0.0, (time.perf_counter() - started - clock.seconds) * 1000)
                headers = [*message.get("headers", ()), id_header]
                headers.append((b"x-tokenhub-overhead-ms", b"%.3f" % overhead_ms))
                message["headers"] = headers
                for name, value in headers:
                    if name == _DISPATCH:
                        self._metrics.overhead_ms(value.decode(), overhead_ms)
                        break
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started_response:
                raise  # too late to answer: the server closes the connection
            log.error("unhandled_error", path=scope["path"], exc_info=exc)
            await reply_for(exc).send(sending)


class PostRoutes:
    """The ``/v1`` POST endpoints, found by exact path ahead of Starlette's exception middleware and router.

    They are plain ASGI and answer their own errors, so those layers did nothing for them but cost the hot
    path CPU (measured at concurrency 64: 0.260 ms a request with them, 0.240 without). Every other request,
    404s and 405s included, still goes through Starlette's router.
    """

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, ASGIApp]) -> None:
        self.app = app
        self._endpoints = dict(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._endpoints.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def request_id_of(scope: Scope) -> str:
    return str(scope["state"]["request_id"])
