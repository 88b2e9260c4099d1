"""What every ``/v1`` endpoint shares, as plain ASGI: the hot path, so no per-request framework objects.

Reading a bounded body, racing the work against the client's disconnect (which cancels it, and the upstream
call with it), and sending JSON, errors and server-sent events.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Protocol, TypeVar

import orjson
from starlette.types import Receive, Scope, Send

from tokenhub.engine import ChatRequest, Decision, EngineError, Policy, Routed, UpstreamError
from tokenhub.engine.orchestration import OrchestrationDirective, OrchestrationResult
from tokenhub.engine.shaping import Shaping
from tokenhub.engine.streaming import OutChunk
from tokenhub.gateway.errors import BodyTimeout, BodyTooLarge, reply_for
from tokenhub.gateway.middleware import request_id_of
from tokenhub.gateway.server import CONNECTION_LOST, ConnectionLost
from tokenhub.gateway.turns import StreamTurns
from tokenhub.store.models import ApiKeyRow
from tokenhub.temporal_integration.records import CallContext, DispatchReport

T = TypeVar("T")
BODY_TIMEOUT_S = 30.0
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class StreamHandle(Protocol):
    decision: Decision
    deadline: float

    def __aiter__(self) -> AsyncIterator[list[OutChunk]]:
        """Chunks in batches: those the upstream sent together, to be written to the client at once."""
        ...

    async def aclose(self, *, client_gone: bool = False, error: UpstreamError | None = None) -> None: ...


class Dispatcher(Protocol):
    async def chat(
        self, request: ChatRequest, policy: Policy, ctx: CallContext, shaping: Shaping
    ) -> Routed: ...

    async def plan(
        self,
        request: ChatRequest,
        directive: OrchestrationDirective,
        ctx: CallContext,
        shaping: Shaping,
        policy: Policy,
    ) -> OrchestrationResult: ...

    async def open_stream(self, request: ChatRequest, policy: Policy, ctx: CallContext) -> StreamHandle: ...


class ClientGone(Exception):
    """The client disconnected before we answered."""


class Endpoint(ABC):
    """A ``/v1`` endpoint: reads the body, runs ``handle``, turns engine errors into OpenAI errors."""

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        report = DispatchReport()
        try:
            body = await read_body(scope, receive, self._max_body)
            await self.handle(scope, receive, send, body, report)
        except EngineError as exc:
            await reply_for(exc).send(send, dispatch_headers(report) if report.decided else [])
        except ClientGone:
            return

    @abstractmethod
    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, report: DispatchReport
    ) -> None:
        """Answer one request whose ``body`` has been read."""


def call_context(scope: Scope, body: bytes, report: DispatchReport) -> CallContext:
    """The request's identity: its id, its API key, and an Idempotency-Key with the body's hash."""
    key = (header(scope, b"idempotency-key") or "").strip()[:255] or None
    api_key = api_key_of(scope)
    return CallContext(
        request_id=request_id_of(scope),
        api_key_id=api_key.id if api_key else None,
        idempotency_key=key,
        body_sha256=hashlib.sha256(body).hexdigest() if key else None,
        report=report,
    )


def api_key_of(scope: Scope) -> ApiKeyRow | None:
    """The API key ``AccessControl`` accepted for this request (None when keys are not required)."""
    key: ApiKeyRow | None = scope.get("state", {}).get("api_key")
    return key


def keyed(scope: Scope, policy: Policy) -> Policy:
    """``policy`` bound to the request's API key: its budget pays, and only its models may answer."""
    key = api_key_of(scope)
    if key is None:
        return policy
    return replace(
        policy, account=key.id, allowed_models=tuple(key.models) if key.models is not None else None
    )


def dispatch_headers(report: DispatchReport) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-tokenhub-dispatch", report.path.encode())]
    if report.workflow_id:
        headers.append((b"x-tokenhub-workflow-id", report.workflow_id.encode()))
    if report.replayed:
        headers.append((b"x-tokenhub-idempotency-replay", b"true"))
    return headers


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes, arriving within ``BODY_TIMEOUT_S``."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge(limit)
    message = await receive()  # usually the whole body, already buffered by the server
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while True:
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    raise BodyTooLarge(limit)
                if not message.get("more_body", False):
                    return b"".join(chunks)
                message = await receive()
    except TimeoutError:
        raise BodyTimeout(BODY_TIMEOUT_S) from None


async def _watch(receive: Receive, leave: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    leave()


async def unless_disconnected(scope: Scope, receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work`` unless the client leaves first; then cancel it (it closes its upstream on the way
    out) and raise ``ClientGone``. Our own cancellation propagates unchanged.

    ``work`` runs in this task, which is cancelled here if the client leaves: a task of its own for
    ``work`` would cost two more turns of the event loop (its start, and waking this task when it ends),
    and under load every turn waits behind every other ready request. The leaving is told by our server
    protocol (``gateway/server.py``); under another server, a watcher task waits for it on ``receive()``."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("unless_disconnected runs inside a task")
    gone = False

    def leave() -> None:
        nonlocal gone
        gone = True
        task.cancel()

    lost: ConnectionLost | None = (scope.get("extensions") or {}).get(CONNECTION_LOST)
    watcher = None
    if lost is not None:
        if lost.happened:  # gone already: the work is not started
            if inspect.iscoroutine(work):
                work.close()
            raise ClientGone
        lost.listen(leave)
    else:
        watcher = asyncio.ensure_future(_watch(receive, leave))
    try:
        result = await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:  # the client's leaving, and nobody else's cancellation
            raise ClientGone from None
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
        elif lost is not None:
            lost.ignore(leave)
    if gone:  # the client left as the work ended, and the work swallowed the cancellation
        task.uncancel()
        raise ClientGone
    return result


def routing_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-tokenhub-model", decision.model_id.encode()),
        (b"x-tokenhub-provider", decision.provider_id.encode()),
        (b"x-tokenhub-reason", decision.reason.encode()),
    ]


async def send_stream(
    stream: StreamHandle,
    scope: Scope,
    receive: Receive,
    send: Send,
    extra: list[tuple[bytes, bytes]],
    turns: StreamTurns,
) -> None:
    """Send the stream as SSE, recording it once however it ends; ``turns`` spaces its batches out."""
    headers = [*_SSE_HEADERS, *routing_headers(stream.decision), *extra]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    client_gone, failure = False, None
    try:
        failure = await unless_disconnected(scope, receive, _pump(stream, send, turns))
    except (ClientGone, OSError):  # a send that fails means the client went away too
        client_gone = True
    finally:
        await stream.aclose(client_gone=client_gone, error=failure)


async def _pump(stream: StreamHandle, send: Send, turns: StreamTurns) -> UpstreamError | None:
    """Forward chunks until the end. A failure after the first byte becomes one ``data: {"error": …}``
    event (no ``event:`` line, which the openai SDK would not read) and no ``[DONE]``; it is returned."""
    failure: UpstreamError | None = None
    try:
        async with asyncio.timeout(max(0.0, stream.deadline - time.monotonic())):
            async for batch in stream:
                jsons = [chunk if type(chunk) is bytes else orjson.dumps(chunk) for chunk in batch]
                data = b"data: " + b"\n\ndata: ".join(jsons) + b"\n\n"
                await send({"type": "http.response.body", "body": data, "more_body": True})
                # Other requests run between batches: a burst already read would otherwise go out whole
                # in one turn of the loop, and every stream started meanwhile would wait for it.
                await turns.take()
    except UpstreamError as exc:
        failure = exc
    except TimeoutError:
        decision = stream.decision
        failure = UpstreamError(
            "timeout",
            "the stream exceeded the request time limit",
            provider_id=decision.provider_id,
            model_id=decision.model_id,
        )
    if failure is None:
        await send({"type": "http.response.body", "body": _DONE})
    else:
        await send(
            {"type": "http.response.body", "body": b"data: " + reply_for(failure).body_bytes() + b"\n\n"}
        )
    return failure


async def send_json(send: Send, body: object, headers: list[tuple[bytes, bytes]]) -> None:
    payload = orjson.dumps(body)
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": start})
    await send({"type": "http.response.body", "body": payload})


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), if sent."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
