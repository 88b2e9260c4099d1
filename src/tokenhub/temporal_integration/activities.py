"""The activities, thin: they run the engine or record an outcome, receiving both by injection.

No activity raises for a provider or routing error: that is the request's result, returned to the client as
the direct path would return it, and not something Temporal should retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from temporalio import activity

from tokenhub.engine import Engine, EngineError, ResultRecorder, TokenCount
from tokenhub.engine.upstream_time import start_clock
from tokenhub.store import RequestLog
from tokenhub.temporal_integration.records import closed_row, error_row, row
from tokenhub.temporal_integration.types import (
    CHAT_ACTIVITY,
    LOG_RESULT_ACTIVITY,
    MODEL_CALL_ACTIVITY,
    RANK_ACTIVITY,
    ChatInput,
    ChatOutput,
    ErrorInfo,
    LogInput,
    ModelCallInput,
    ModelCallOutput,
    RankInput,
    RankOutput,
)

HEARTBEAT_EVERY_S = 1.0
_NO_TOKENS = TokenCount(0, 0)


class Activities:
    def __init__(
        self, engine: Engine, recorder: ResultRecorder, status_of: Callable[[EngineError], int]
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._status_of = status_of
        self._running: dict[str, set[asyncio.Task[object]]] = {}

    def interrupt(self, log_id: str) -> bool:
        """Stop the model calls of request ``log_id`` running in this process (its client left).

        A local activity hears of a workflow cancellation only when its workflow task ends, so the
        gateway, whose worker runs it, stops it directly. True if any was running here."""
        tasks = self._running.get(log_id, set())
        for task in tasks:
            task.cancel()
        return bool(tasks)

    @contextlib.contextmanager
    def _running_for(self, log_id: str) -> Iterator[None]:
        """Register the current task as working for request ``log_id`` (so ``interrupt`` can stop it)."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._running.setdefault(log_id, set()).add(task)
        try:
            yield
        finally:
            tasks = self._running.get(log_id, set())
            tasks.discard(task)
            if not tasks:
                self._running.pop(log_id, None)

    @activity.defn(name=CHAT_ACTIVITY)
    async def chat(self, chat: ChatInput) -> ChatOutput:
        started, clock = time.monotonic(), start_clock()
        with self._running_for(chat.log_id):
            try:
                routed = await self._engine.complete(chat.request, chat.policy, chat.shaping)
                output = ChatOutput(
                    decision=routed.decision,
                    response=routed.completion,
                    tokens=routed.tokens,
                    cost_usd=routed.cost_usd,
                )
            except EngineError as exc:
                output = ChatOutput(error=ErrorInfo.of(exc))
            except asyncio.CancelledError:
                if activity.is_worker_shutdown():
                    raise  # not the client's doing: let the next worker run it
                output = ChatOutput(cancelled=True)
        latency_ms = (time.monotonic() - started) * 1000
        return output.model_copy(update={"latency_ms": latency_ms, "upstream_ms": clock.seconds * 1000})

    @activity.defn(name=MODEL_CALL_ACTIVITY)
    async def model_call(self, job: ModelCallInput) -> ModelCallOutput:
        """One orchestration call; heartbeats while it runs, so a lost worker is noticed and the call
        (only this one) is made again elsewhere."""
        beating, clock = asyncio.ensure_future(_heartbeat()), start_clock()
        try:
            with self._running_for(job.log_id):
                try:
                    output = ModelCallOutput(result=await self._engine.call(job.call))
                except EngineError as exc:
                    output = ModelCallOutput(error=ErrorInfo.of(exc))
                except asyncio.CancelledError:
                    if activity.is_worker_shutdown():
                        raise
                    output = ModelCallOutput(cancelled=True)
        finally:
            beating.cancel()
        return output.model_copy(update={"upstream_ms": clock.seconds * 1000})

    @activity.defn(name=RANK_ACTIVITY)
    async def rank(self, job: RankInput) -> RankOutput:
        try:
            return RankOutput(models=await self._engine.rank(job.request, job.policy, job.exclude))
        except EngineError as exc:
            return RankOutput(error=ErrorInfo.of(exc))

    @activity.defn(name=LOG_RESULT_ACTIVITY)
    async def log_result(self, log: LogInput) -> None:
        """Idempotent: the row's key is the request's ``log_id``, so a retry writes nothing new."""
        await self._recorder.log_result(self._row(log))

    def _row(self, log: LogInput) -> RequestLog:
        origin, outcome = log.origin, log.outcome
        if outcome.cancelled:
            return closed_row(origin, path=log.path)
        if outcome.error is not None:
            error = outcome.error.to_error()
            return error_row(origin, error, path=log.path, status=self._status_of(error))
        return row(
            origin,
            path=log.path,
            status=200,
            model=outcome.model_id,
            provider=outcome.provider_id,
            reason=outcome.reason,
            attempts=outcome.attempts,
            tokens=outcome.tokens or _NO_TOKENS,
            cost_usd=outcome.cost_usd,
        )


async def _heartbeat() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY_S)
