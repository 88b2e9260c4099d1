"""The direct path: the engine called in-process, the outcome recorded by the same ``log_result`` that a
Temporal workflow's LogResultActivity uses — once per request, however it ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from tokenhub.engine import (
    ChatRequest,
    ChatStream,
    Engine,
    EngineError,
    Policy,
    ResultRecorder,
    Routed,
    UpstreamError,
)
from tokenhub.engine.orchestration import OrchestrationDirective, OrchestrationResult
from tokenhub.engine.shaping import NO_SHAPING, Shaping
from tokenhub.engine.streaming import OutChunk
from tokenhub.store import RequestLog
from tokenhub.temporal_integration.records import (
    CLIENT_CLOSED,
    CallContext,
    Origin,
    closed_row,
    error_row,
    routed_row,
    row,
)

NO_POLICY = Policy()


class DirectDispatcher:
    def __init__(
        self, engine: Engine, recorder: ResultRecorder, status_of: Callable[[EngineError], int]
    ) -> None:
        """``status_of`` maps an engine error to the HTTP status the client gets (the gateway's table)."""
        self._engine = engine
        self._recorder = recorder
        self._status_of = status_of

    async def chat(
        self, request: ChatRequest, policy: Policy, ctx: CallContext, shaping: Shaping = NO_SHAPING
    ) -> Routed:
        ctx.report.took("direct")
        origin = Origin.of(ctx, policy.mode, requested_model=request.model, stream=False)
        try:
            routed = await self._engine.complete(request, policy, shaping)
            await self._recorder.log_result(routed_row(origin, routed, path="direct"))
        except BaseException as exc:
            await self._record_unfinished(origin, exc)
            raise
        return routed

    async def plan(
        self,
        request: ChatRequest,
        directive: OrchestrationDirective,
        ctx: CallContext,
        shaping: Shaping = NO_SHAPING,
        policy: Policy = NO_POLICY,
    ) -> OrchestrationResult:
        ctx.report.took("direct")
        origin = Origin.of(ctx, directive.mode, requested_model=request.model, stream=False)
        try:
            result = await self._engine.orchestrate(request, directive, shaping, policy)
            await self._recorder.log_result(
                row(
                    origin,
                    path="direct",
                    status=200,
                    model=result.negotiated_model,
                    provider=result.provider_id,
                    reason=result.routing_reason,
                    attempts=result.calls,
                    tokens=result.tokens,
                    cost_usd=result.cost_usd,
                )
            )
        except BaseException as exc:
            await self._record_unfinished(origin, exc)
            raise
        return result

    async def _record_unfinished(self, origin: Origin, exc: BaseException) -> None:
        """Record a request that failed or was cancelled before its answer was recorded. (Called from an
        ``except`` block, not a context manager: that one's object and coroutines cost every request.)"""
        if isinstance(exc, EngineError):
            row = error_row(origin, exc, path="direct", status=self._status_of(exc))
            await self._recorder.log_result(row)
        elif isinstance(exc, asyncio.CancelledError):
            await self._recorder.log_result(closed_row(origin, path="direct"))

    async def open_stream(self, request: ChatRequest, policy: Policy, ctx: CallContext) -> RecordedStream:
        ctx.report.took("direct")
        origin = Origin.of(ctx, policy.mode, requested_model=request.model, stream=True)
        try:
            stream = await self._engine.open_stream(request, policy)
        except BaseException as exc:
            await self._record_unfinished(origin, exc)
            raise

        async def record(stream: ChatStream, *, client_gone: bool, error: UpstreamError | None) -> None:
            await self._recorder.log_result(
                self._stream_row(origin, stream, client_gone=client_gone, error=error)
            )

        return RecordedStream(stream, record)

    def _stream_row(
        self, origin: Origin, stream: ChatStream, *, client_gone: bool, error: UpstreamError | None
    ) -> RequestLog:
        error = error or stream.error
        if stream.completed:
            status, error_class, message = 200, None, None
        elif error is not None:
            status, error_class, message = self._status_of(error), error.error_class, error.message
        else:
            gone = "client closed the stream" if client_gone else "stream closed before it finished"
            status, error_class, message = CLIENT_CLOSED, None, gone
        decision = stream.decision
        return row(
            origin,
            path="direct",
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


class StreamRecorder(Protocol):
    async def __call__(
        self, stream: ChatStream, *, client_gone: bool, error: UpstreamError | None
    ) -> None: ...


class RecordedStream:
    """A ``ChatStream`` that is recorded exactly once, when it is closed. Always ``aclose()`` it."""

    def __init__(self, stream: ChatStream, record: StreamRecorder) -> None:
        self._stream = stream
        self._record = record
        self._closed = False
        self.decision = stream.decision
        self.deadline = stream.deadline

    def __aiter__(self) -> AsyncIterator[list[OutChunk]]:
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
