"""The two activities, thin: ChatActivity runs the engine, LogResultActivity records the outcome.

They receive the engine and the recorder by injection. ChatActivity never raises for a provider or routing
error: that is the request's result, returned to the client as the direct path would return it, and not
something Temporal should retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

from tokenhub.engine import Engine, EngineError, ResultRecorder, Routed
from tokenhub.temporal_integration.records import Origin, closed_row, error_row, routed_row
from tokenhub.temporal_integration.types import (
    CHAT_ACTIVITY,
    LOG_RESULT_ACTIVITY,
    ChatInput,
    ChatOutput,
    ErrorInfo,
    LogInput,
)


class Activities:
    def __init__(
        self, engine: Engine, recorder: ResultRecorder, status_of: Callable[[EngineError], int]
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._status_of = status_of
        self._running: dict[str, asyncio.Task[object]] = {}

    def interrupt(self, log_id: str) -> bool:
        """Stop the ChatActivity of request ``log_id`` if it runs in this process (its client left).

        A local activity hears of a workflow cancellation only when its workflow task ends, so the
        gateway, whose worker runs it, stops it directly. True if it was running here."""
        task = self._running.get(log_id)
        if task is None:
            return False
        task.cancel()
        return True

    @activity.defn(name=CHAT_ACTIVITY)
    async def chat(self, chat: ChatInput) -> ChatOutput:
        started = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            self._running[chat.log_id] = task
        try:
            routed = await self._engine.route_and_send(chat.request, chat.policy)
        except EngineError as exc:
            return ChatOutput(error=ErrorInfo.of(exc), latency_ms=(time.monotonic() - started) * 1000)
        except asyncio.CancelledError:
            if activity.is_worker_shutdown():
                raise  # not the client's doing: let the next worker run it
            return ChatOutput(cancelled=True, latency_ms=(time.monotonic() - started) * 1000)
        finally:
            self._running.pop(chat.log_id, None)
        return ChatOutput(
            decision=routed.decision,
            response=routed.completion,
            tokens=routed.tokens,
            cost_usd=routed.cost_usd,
            latency_ms=(time.monotonic() - started) * 1000,
        )

    @activity.defn(name=LOG_RESULT_ACTIVITY)
    async def log_result(self, log: LogInput) -> None:
        """Idempotent: the row's key is the request's ``log_id``, so a retry writes nothing new."""
        chat, output = log.chat, log.output
        origin = Origin(
            request_id=chat.request_id,
            log_id=chat.log_id,
            received_at=chat.received_at,
            mode=chat.policy.mode,
            stream=False,
            requested_model=chat.request.model or "auto",
            api_key_id=chat.api_key_id,
        )
        if output.cancelled:
            record = closed_row(origin, path="temporal")
        elif output.error is not None:
            error = output.error.to_error()
            record = error_row(origin, error, path="temporal", status=self._status_of(error))
        elif output.decision is not None and output.response is not None and output.tokens is not None:
            routed = Routed(output.response, output.decision, output.tokens, output.cost_usd)
            record = routed_row(origin, routed, path="temporal")
        else:
            # A bug, not an outage: retrying cannot help.
            raise ApplicationError("ChatOutput has neither an answer nor an error", non_retryable=True)
        await self._recorder.log_result(record)
