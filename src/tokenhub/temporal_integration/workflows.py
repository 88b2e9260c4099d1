"""ChatWorkflow: ChatActivity, then LogResultActivity. Deterministic: no I/O, no clocks, no randomness.

Both activities run as local activities (in the worker that runs the workflow task): with eager start that
is the gateway's own process, and the whole request costs one workflow task instead of a round of
matching per activity (``shared/reference/temporal-measured.md``: ~35-58 ms p50 against ~68-97 ms for
regular activities). The history still names each one (a MarkerRecorded event per activity).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from tokenhub.temporal_integration.types import (
        CHAT_ACTIVITY,
        CHAT_WORKFLOW,
        LOG_RESULT_ACTIVITY,
        ChatInput,
        ChatOutput,
        LogInput,
    )

# Provider errors come back as results, never as exceptions, so an exception here is a bug: don't repeat it.
# A lost worker is different: its workflow task times out and the next worker runs ChatActivity again.
CHAT_RETRY = RetryPolicy(maximum_attempts=1)
# Recording must not be lost: retry until it succeeds (the write is idempotent on the request's log id).
LOG_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
LOG_TIMEOUT = timedelta(seconds=30)


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
        await _log_come_what_may(LogInput(chat=chat, output=output))
        return output


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
