"""The workflows: deterministic, no I/O, no clocks, no randomness; every effect is an activity.

``ChatWorkflow`` runs ChatActivity then LogResultActivity as local activities: with eager start they run in
the gateway's own worker and the whole request costs one workflow task (``shared/reference/
temporal-measured.md``: ~35-58 ms p50 against ~68-97 ms with regular activities). The history still names
each (one MarkerRecorded event per activity).

``OrchestrationWorkflow`` makes each model call a regular activity, identified by its phase
(``plan``, ``critique-1``…), so the history shows every phase and a worker lost mid-way costs only the
call it was making: the next worker replays the finished phases from history instead of calling again.
Those calls heartbeat, so a lost worker is noticed within ``HEARTBEAT_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from tokenhub.engine import ChatRequest, EngineError, Policy
    from tokenhub.engine.errors import PhaseFailed
    from tokenhub.engine.orchestration import CallResult, ModelCall, orchestrate
    from tokenhub.engine.router import check_result
    from tokenhub.temporal_integration.types import (
        CHAT_ACTIVITY,
        CHAT_WORKFLOW,
        LOG_RESULT_ACTIVITY,
        MODEL_CALL_ACTIVITY,
        ORCHESTRATION_WORKFLOW,
        RANK_ACTIVITY,
        ChatInput,
        ChatOutput,
        ErrorInfo,
        LogInput,
        ModelCallInput,
        ModelCallOutput,
        OrchestrationInput,
        OrchestrationOutput,
        RankInput,
        RankOutput,
    )

# Provider errors come back as results, never as exceptions, so an exception in ChatActivity is a bug: don't
# repeat it. A lost worker is different: its workflow task times out and the next worker runs it again.
CHAT_RETRY = RetryPolicy(maximum_attempts=1)
# An orchestration call is retried only when its worker is lost (a heartbeat or start-to-close timeout).
CALL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)
HEARTBEAT_TIMEOUT = timedelta(seconds=5)
# Recording must not be lost: retry until it succeeds (the write is idempotent on the request's log id).
LOG_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
LOG_TIMEOUT = timedelta(seconds=30)
RANK_TIMEOUT = timedelta(seconds=10)


@workflow.defn(name=CHAT_WORKFLOW)
class ChatWorkflow:
    @workflow.run
    async def run(self, chat: ChatInput) -> ChatOutput:
        try:
            output: ChatOutput = await workflow.execute_local_activity(
                CHAT_ACTIVITY,
                chat,
                result_type=ChatOutput,
                start_to_close_timeout=timedelta(seconds=chat.timeout_s),
                retry_policy=CHAT_RETRY,
            )
        except BaseException as exc:
            if not is_cancelled_exception(exc):
                raise
            # The client went away and the gateway cancelled us: the request is recorded as closed.
            output = ChatOutput(cancelled=True)
        await _log_come_what_may(LogInput(origin=chat.origin(chat.policy.mode), outcome=output.outcome()))
        return output


@workflow.defn(name=ORCHESTRATION_WORKFLOW)
class OrchestrationWorkflow:
    @workflow.run
    async def run(self, plan: OrchestrationInput) -> OrchestrationOutput:
        calls = _ActivityCalls(plan.log_id, plan.timeout_s)
        try:
            result = check_result(
                await orchestrate(plan.request, plan.directive, calls, plan.policy), plan.shaping
            )
            output = OrchestrationOutput(result=result)
        except PhaseFailed as exc:
            interrupted = isinstance(exc.cause, _Interrupted)
            output = OrchestrationOutput(
                cancelled=interrupted, error=None if interrupted else ErrorInfo.of(exc)
            )
        except EngineError as exc:
            output = OrchestrationOutput(error=ErrorInfo.of(exc))
        except BaseException as exc:
            if not is_cancelled_exception(exc):
                raise
            output = OrchestrationOutput(cancelled=True)
        output = output.model_copy(update={"upstream_ms": calls.upstream_ms})
        await _log_come_what_may(LogInput(origin=plan.origin(plan.directive.mode), outcome=output.outcome()))
        return output


class _Interrupted(EngineError):
    """A call whose client went away: the orchestration stops and is recorded as closed."""

    def __init__(self) -> None:
        super().__init__("the client closed the request")


class _ActivityCalls:
    """The orchestration's ``Calls``, each one an activity."""

    def __init__(self, log_id: str, timeout_s: float) -> None:
        self._log_id = log_id
        self._timeout = timedelta(seconds=timeout_s)
        self.upstream_ms = 0.0

    async def call(self, call: ModelCall) -> CallResult:
        output: ModelCallOutput = await workflow.execute_activity(
            MODEL_CALL_ACTIVITY,
            ModelCallInput(log_id=self._log_id, call=call),
            result_type=ModelCallOutput,
            activity_id=call.phase,
            start_to_close_timeout=self._timeout,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=CALL_RETRY,
        )
        self.upstream_ms += output.upstream_ms
        if output.cancelled:
            raise _Interrupted
        if output.error is not None:
            raise output.error.to_error()
        if output.result is None:
            raise _Interrupted
        return output.result

    async def rank(self, request: ChatRequest, policy: Policy, exclude: list[str]) -> list[str]:
        ranked: RankOutput = await workflow.execute_local_activity(
            RANK_ACTIVITY,
            RankInput(request=request, policy=policy, exclude=exclude),
            result_type=RankOutput,
            start_to_close_timeout=RANK_TIMEOUT,
            retry_policy=CHAT_RETRY,
        )
        if ranked.error is not None:
            raise ranked.error.to_error()
        return ranked.models


async def _log_come_what_may(log: LogInput) -> None:
    """Record the outcome even if a cancellation arrives meanwhile: every request is logged once."""
    logging = workflow.start_local_activity(
        LOG_RESULT_ACTIVITY, log, start_to_close_timeout=LOG_TIMEOUT, retry_policy=LOG_RETRY
    )
    while True:
        try:
            await asyncio.shield(logging)
            return
        except asyncio.CancelledError:
            continue
