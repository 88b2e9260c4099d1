"""Dispatch: how a request that reached us gets run, and where it is recorded.

The direct path calls the engine in-process and ends in the same ``log_result`` a Temporal workflow's
LogResultActivity will use, so each request is recorded exactly once whichever way it went — success,
engine error, client disconnect, or a stream that broke half way.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from tokenhub.engine import (
    ChatRequest,
    ChatStream,
    Engine,
    EngineError,
    ModelNotFound,
    NoEligibleModel,
    Policy,
    ResultRecorder,
    Routed,
    RoutingFailed,
    TokenCount,
    UpstreamError,
)
from tokenhub.engine.providers.base import Chunk
from tokenhub.store import RequestLog

CLIENT_CLOSED = 499


@dataclass(frozen=True)
class CallContext:
    """Who is asking, and when they started asking (``time.monotonic()``)."""

    request_id: str
    api_key_id: str | None = None
    started: float = field(default_factory=time.monotonic)


class DirectDispatcher:
    path = "direct"

    def __init__(
        self, engine: Engine, recorder: ResultRecorder, status_of: Callable[[EngineError], int]
    ) -> None:
        """``status_of`` maps an engine error to the HTTP status the client gets (the gateway's table)."""
        self._engine = engine
        self._recorder = recorder
        self._status_of = status_of

    async def chat(self, request: ChatRequest, policy: Policy, ctx: CallContext) -> Routed:
        try:
            routed = await self._engine.route_and_send(request, policy)
        except EngineError as exc:
            await self._recorder.log_result(self._failure_row(ctx, request, policy, exc, stream=False))
            raise
        except asyncio.CancelledError:
            await self._recorder.log_result(self._closed_row(ctx, request, policy, stream=False))
            raise
        decision = routed.decision
        await self._recorder.log_result(
            _row(
                ctx,
                policy,
                path=self.path,
                stream=False,
                status=200,
                model=decision.model_id,
                provider=decision.provider_id,
                reason=decision.reason,
                attempts=decision.attempts,
                tokens=routed.tokens,
                cost_usd=routed.cost_usd,
            )
        )
        return routed

    async def open_stream(self, request: ChatRequest, policy: Policy, ctx: CallContext) -> RecordedStream:
        try:
            stream = await self._engine.open_stream(request, policy)
        except EngineError as exc:
            await self._recorder.log_result(self._failure_row(ctx, request, policy, exc, stream=True))
            raise
        except asyncio.CancelledError:
            await self._recorder.log_result(self._closed_row(ctx, request, policy, stream=True))
            raise
        return RecordedStream(stream, functools.partial(self._log_stream, ctx=ctx, policy=policy))

    async def _log_stream(
        self,
        stream: ChatStream,
        *,
        client_gone: bool,
        error: UpstreamError | None,
        ctx: CallContext,
        policy: Policy,
    ) -> None:
        decision = stream.decision
        error = error or stream.error
        if stream.completed:
            status, error_class, message = 200, None, None
        elif error is not None:
            status, error_class, message = self._status_of(error), error.error_class, error.message
        elif client_gone:
            status, error_class, message = CLIENT_CLOSED, None, "client closed the stream"
        else:
            status, error_class, message = CLIENT_CLOSED, None, "stream closed before it finished"
        await self._recorder.log_result(
            _row(
                ctx,
                policy,
                path=self.path,
                stream=True,
                status=status,
                model=decision.model_id,
                provider=decision.provider_id,
                reason=decision.reason,
                attempts=decision.attempts,
                tokens=stream.tokens(),
                cost_usd=stream.cost_usd(),
                ttft_ms=stream.ttft_ms,
                error_class=error_class,
                error_message=message,
            )
        )

    def _failure_row(
        self, ctx: CallContext, request: ChatRequest, policy: Policy, exc: EngineError, *, stream: bool
    ) -> RequestLog:
        model, provider, attempts = request.model or "auto", "", 0
        if isinstance(exc, RoutingFailed):
            model, provider, attempts = exc.last.model_id, exc.last.provider_id, len(exc.attempts)
        return _row(
            ctx,
            policy,
            path=self.path,
            stream=stream,
            status=self._status_of(exc),
            model=model,
            provider=provider,
            reason="failed",
            attempts=attempts,
            tokens=TokenCount(0, 0),
            cost_usd=0.0,
            error_class=_error_kind(exc),
            error_message=exc.message,
        )

    def _closed_row(
        self, ctx: CallContext, request: ChatRequest, policy: Policy, *, stream: bool
    ) -> RequestLog:
        return _row(
            ctx,
            policy,
            path=self.path,
            stream=stream,
            status=CLIENT_CLOSED,
            model=request.model or "auto",
            provider="",
            reason="client-closed",
            attempts=0,
            tokens=TokenCount(0, 0),
            cost_usd=0.0,
            error_message="client closed the request",
        )


class RecordedStream:
    """A ``ChatStream`` that is recorded exactly once, when it is closed. Always ``aclose()`` it."""

    def __init__(self, stream: ChatStream, record: StreamRecorder) -> None:
        self._stream = stream
        self._record = record
        self._closed = False
        self.decision = stream.decision
        self.deadline = stream.deadline

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return aiter(self._stream)

    async def aclose(self, *, client_gone: bool = False, error: UpstreamError | None = None) -> None:
        """Close the upstream and record the outcome. ``error`` is a failure the caller imposed (a
        deadline); ``client_gone`` says the client left. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.aclose()
        finally:
            await self._record(self._stream, client_gone=client_gone, error=error)


class StreamRecorder(Protocol):
    async def __call__(
        self, stream: ChatStream, *, client_gone: bool, error: UpstreamError | None
    ) -> None: ...


def _row(
    ctx: CallContext,
    policy: Policy,
    *,
    path: str,
    stream: bool,
    status: int,
    model: str,
    provider: str,
    reason: str,
    attempts: int,
    tokens: TokenCount,
    cost_usd: float,
    ttft_ms: float | None = None,
    error_class: str | None = None,
    error_message: str | None = None,
) -> RequestLog:
    return RequestLog(
        id=str(uuid.uuid4()),
        request_id=ctx.request_id,
        created_at=datetime.now(UTC),
        model=model,
        provider=provider,
        mode=policy.mode,
        path=path,
        stream=stream,
        status=status,
        reason=reason,
        attempts=attempts,
        input_tokens=tokens.input_tokens,
        output_tokens=tokens.output_tokens,
        tokens_estimated=tokens.estimated,
        cost_usd=cost_usd,
        latency_ms=(time.monotonic() - ctx.started) * 1000,
        ttft_ms=ttft_ms,
        error_class=error_class,
        error_message=error_message,
        api_key_id=ctx.api_key_id,
    )


def _error_kind(exc: EngineError) -> str:
    if isinstance(exc, (RoutingFailed, UpstreamError)):
        return exc.error_class
    if isinstance(exc, ModelNotFound):
        return "model_not_found"
    if isinstance(exc, NoEligibleModel):
        return "no_eligible_model"
    return "invalid_request"
