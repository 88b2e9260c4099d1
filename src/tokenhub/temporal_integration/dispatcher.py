"""Per request: Temporal or direct. Streams always go direct.

Temporal is used when the flag is on, the client is connected and the breaker allows. The request falls
back to the direct path only for Temporal faults — the start fails, no worker picks the workflow up within
the pickup bound, the wait for the result breaks — and each fault counts against the breaker. A provider
error inside the workflow is the request's result: it reaches the client exactly as the direct path would
send it, the breaker counts it as a success, and nothing is re-sent.

The one case that can call a provider twice: Temporal is lost after ChatActivity started. The fallback
then runs the request directly; the abandoned workflow is terminated as soon as Temporal answers again,
and its log write (same log id) is a no-op. It is counted as
``tokenhub_temporal_fallback_total{reason="result_lost"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, Protocol, TypeVar

import structlog
from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from tokenhub.engine import ChatRequest, Engine, EngineError, Policy, Routed
from tokenhub.engine.orchestration import OrchestrationDirective, OrchestrationResult
from tokenhub.engine.shaping import NO_SHAPING, Shaping
from tokenhub.engine.upstream_time import charge
from tokenhub.telemetry import EventBus, Metrics
from tokenhub.temporal_integration.breaker import Breaker
from tokenhub.temporal_integration.direct import NO_POLICY, DirectDispatcher, RecordedStream
from tokenhub.temporal_integration.flag import TemporalFlag
from tokenhub.temporal_integration.manager import TemporalManager
from tokenhub.temporal_integration.records import CallContext, IdempotencyConflict
from tokenhub.temporal_integration.types import (
    CHAT_WORKFLOW,
    ORCHESTRATION_WORKFLOW,
    ChatInput,
    ChatOutput,
    ErrorInfo,
    OrchestrationInput,
    OrchestrationOutput,
)

log = structlog.get_logger(__name__)

MEMO_BODY = "body_sha256"
# An abandoned workflow gets this long to be cancelled or terminated before we stop waiting for Temporal.
CLEANUP_TIMEOUT_S = 1.0
# Beyond the engine's own deadline: how long a workflow may live, and how long we wait for its result.
EXECUTION_SLACK_S = 30.0
RESULT_SLACK_S = 5.0


class _Fault(Exception):
    """A Temporal fault: the request falls back to the direct path. ``reason`` labels the metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _Durable(Protocol):
    """What both workflows return: an answer, or the request's error as a result."""

    @property
    def error(self) -> ErrorInfo | None: ...


OutputT = TypeVar("OutputT", bound=_Durable)


@dataclass(frozen=True)
class _Job(Generic[OutputT]):
    """One workflow to run for a request."""

    workflow: str
    prefix: str  # of the workflow id: chat-<request id>, plan-<request id>
    arg: ChatInput | OrchestrationInput
    output_type: type[OutputT]
    deadline_s: float


class TemporalDispatcher:
    def __init__(
        self,
        direct: DirectDispatcher,
        engine: Engine,
        manager: TemporalManager,
        breaker: Breaker,
        flag: TemporalFlag,
        metrics: Metrics,
        events: EventBus,
        *,
        start_timeout_s: float,
        pickup_timeout_s: float,
        status_of: Callable[[EngineError], int],
    ) -> None:
        self._direct = direct
        self._engine = engine
        self._manager = manager
        self._breaker = breaker
        self._flag = flag
        self._metrics = metrics
        self._events = events
        self._start_timeout = start_timeout_s
        self._pickup_timeout = pickup_timeout_s
        self._status_of = status_of

    async def open_stream(self, request: ChatRequest, policy: Policy, ctx: CallContext) -> RecordedStream:
        self._metrics.dispatched("direct")
        return await self._direct.open_stream(request, policy, ctx)

    async def chat(
        self, request: ChatRequest, policy: Policy, ctx: CallContext, shaping: Shaping = NO_SHAPING
    ) -> Routed:
        client = self._durable_client(ctx)
        if client is None:
            return await self._direct.chat(request, policy, ctx, shaping)
        deadline = self._engine.request_deadline(policy)
        arg = ChatInput(
            request_id=ctx.request_id,
            request=request,
            policy=policy,
            log_id=ctx.log_id,
            api_key_id=ctx.api_key_id,
            received_at=ctx.received_at,
            timeout_s=deadline,
            shaping=shaping,
        )
        output = await self._durably(client, ctx, _Job(CHAT_WORKFLOW, "chat", arg, ChatOutput, deadline))
        if output is None:
            return await self._direct.chat(request, policy, ctx, shaping)
        charge(output.upstream_ms / 1000)
        if output.error is not None:
            raise output.error.to_error()
        if output.decision is None or output.response is None or output.tokens is None:
            raise RuntimeError("workflow returned neither an answer nor an error")
        return Routed(output.response, output.decision, output.tokens, output.cost_usd)

    async def plan(
        self,
        request: ChatRequest,
        directive: OrchestrationDirective,
        ctx: CallContext,
        shaping: Shaping = NO_SHAPING,
        policy: Policy = NO_POLICY,
    ) -> OrchestrationResult:
        client = self._durable_client(ctx)
        if client is None:
            return await self._direct.plan(request, directive, ctx, shaping, policy)
        # An orchestration makes several calls in turn: each gets the per-call bound, the whole several.
        call_s = self._engine.request_deadline(policy)
        arg = OrchestrationInput(
            request_id=ctx.request_id,
            request=request,
            directive=directive,
            log_id=ctx.log_id,
            api_key_id=ctx.api_key_id,
            received_at=ctx.received_at,
            timeout_s=call_s,
            shaping=shaping,
            policy=policy,
        )
        bound = call_s * (2 * max(directive.iterations, 1) + 2)
        output = await self._durably(
            client, ctx, _Job(ORCHESTRATION_WORKFLOW, "plan", arg, OrchestrationOutput, bound)
        )
        if output is None:
            return await self._direct.plan(request, directive, ctx, shaping, policy)
        charge(output.upstream_ms / 1000)
        if output.error is not None:
            raise output.error.to_error()
        if output.result is None:
            raise RuntimeError("workflow returned neither an answer nor an error")
        return output.result

    def _durable_client(self, ctx: CallContext) -> Client | None:
        """The Temporal client for this request; None when it runs directly (the flag is off, or Temporal is
        not connected: a fallback). Asked before a workflow's input is built, which direct calls skip."""
        client = self._manager.client
        if not self._flag.enabled or client is None:
            if self._flag.enabled:
                self._fell_back(ctx, "not_connected")
            else:
                self._metrics.dispatched("direct")
            return None
        return client

    async def _durably(self, client: Client, ctx: CallContext, job: _Job[OutputT]) -> OutputT | None:
        """Run ``job`` as a workflow; None when the request should run directly instead (the breaker is
        open, or a Temporal fault, counted and fed to the breaker)."""
        if not self._breaker.allow():
            self._fell_back(ctx, "breaker_open")
            return None
        try:
            output = await self._run_workflow(client, ctx, job)
        except _Fault as fault:
            self._breaker.record_failure()
            self._fell_back(ctx, fault.reason, str(fault))
            return None
        except BaseException:
            self._breaker.release()
            raise
        # A provider error inside the workflow is still Temporal working: the breaker hears a success.
        self._breaker.record_success()
        self._metrics.dispatched("temporal")
        return output

    async def _run_workflow(self, client: Client, ctx: CallContext, job: _Job[OutputT]) -> OutputT:
        workflow_id = _workflow_id(ctx, job.prefix)
        ctx.report.took("temporal", workflow_id)
        handle: WorkflowHandle[object, OutputT] | None = None
        started_at = time.monotonic()
        try:
            if ctx.idempotency_key:
                handle, replay = await self._attach(client, workflow_id, ctx, job)
                if replay is not None:
                    ctx.report.replayed = True
                    return replay
            if handle is None:
                handle = await self._start(client, ctx, job)
            self._events.publish(
                "workflow_started",
                {
                    "workflow_id": ctx.report.workflow_id,
                    "workflow_type": job.workflow,
                    "request_id": ctx.request_id,
                },
            )
            output = await self._result(handle, job.deadline_s + RESULT_SLACK_S)
        except asyncio.CancelledError:
            # The client left. Our own worker's calls stop at once; the workflow is cancelled through
            # Temporal too (a worker elsewhere, or calls not yet started). It records the request as closed.
            self._manager.interrupt(ctx.log_id)
            await self._cancel(client, ctx.report.workflow_id or workflow_id)
            raise
        except _Fault as fault:
            if handle is not None:
                self._manager.abandon(ctx.report.workflow_id or workflow_id)
            self._events.publish(
                "workflow_failed", {"workflow_id": ctx.report.workflow_id, "reason": fault.reason}
            )
            raise
        self._events.publish(
            "workflow_completed",
            {
                "workflow_id": ctx.report.workflow_id,
                "workflow_type": job.workflow,
                "latency_ms": round((time.monotonic() - started_at) * 1000, 2),
                "failed": output.error is not None,
            },
        )
        return output

    async def _start(
        self, client: Client, ctx: CallContext, job: _Job[OutputT]
    ) -> WorkflowHandle[object, OutputT]:
        """Start the workflow. With an Idempotency-Key a concurrent twin attaches to the same run (and is
        checked for the same body); without one, an id already in use gets a unique suffix instead."""
        workflow_id = ctx.report.workflow_id or _workflow_id(ctx, job.prefix)
        try:
            async with asyncio.timeout(self._start_timeout):
                try:
                    handle = await self._start_as(client, ctx, job, workflow_id)
                except WorkflowAlreadyStartedError:
                    workflow_id = f"{workflow_id}-{uuid.uuid4().hex[:8]}"
                    handle = await self._start_as(client, ctx, job, workflow_id)
                ctx.report.workflow_id = workflow_id
                if ctx.idempotency_key:
                    description = await handle.describe()
                    if await description.memo_value(MEMO_BODY, None) != ctx.body_sha256:
                        raise IdempotencyConflict
                return handle
        except (RPCError, RuntimeError, TimeoutError) as exc:
            raise _Fault("start_failed", str(exc)[:200]) from exc

    async def _start_as(
        self, client: Client, ctx: CallContext, job: _Job[OutputT], workflow_id: str
    ) -> WorkflowHandle[object, OutputT]:
        idempotent = ctx.idempotency_key is not None
        return await client.start_workflow(
            job.workflow,
            job.arg,
            id=workflow_id,
            task_queue=self._manager.target.task_queue,
            result_type=job.output_type,
            execution_timeout=timedelta(seconds=job.deadline_s + EXECUTION_SLACK_S),
            id_conflict_policy=(
                WorkflowIDConflictPolicy.USE_EXISTING if idempotent else WorkflowIDConflictPolicy.FAIL
            ),
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            memo={MEMO_BODY: ctx.body_sha256} if ctx.body_sha256 else None,
            request_eager_start=self._manager.eager,
        )

    async def _result(self, handle: WorkflowHandle[object, OutputT], bound_s: float) -> OutputT:
        """The workflow's output. Without a worker in this process, first make sure one picked it up."""
        waiting = asyncio.ensure_future(handle.result())
        try:
            async with asyncio.timeout(bound_s):
                if not self._manager.worker_running:
                    done, _ = await asyncio.wait((waiting,), timeout=self._pickup_timeout)
                    if not done and not await _picked_up(handle):
                        raise _Fault(
                            "no_worker", f"no worker took the workflow within {self._pickup_timeout:g}s"
                        )
                return await waiting
        except (RPCError, TimeoutError) as exc:
            raise _Fault("result_lost", str(exc)[:200] or "timed out waiting for the result") from exc
        except WorkflowFailureError as exc:
            raise _Fault("workflow_failed", str(exc.cause or exc)[:200]) from exc
        finally:
            waiting.cancel()

    async def _attach(
        self, client: Client, workflow_id: str, ctx: CallContext, job: _Job[OutputT]
    ) -> tuple[WorkflowHandle[object, OutputT] | None, OutputT | None]:
        """An earlier request with this Idempotency-Key: attach to it if it runs, replay its answer if it
        finished well (or with a client error), run afresh if it failed. A different body is a 409."""
        handle = client.get_workflow_handle(workflow_id, result_type=job.output_type)
        try:
            async with asyncio.timeout(self._start_timeout):
                description = await handle.describe()
                body = await description.memo_value(MEMO_BODY, None)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None, None
            raise _Fault("start_failed", str(exc)[:200]) from exc
        except TimeoutError as exc:
            raise _Fault("start_failed", "describe timed out") from exc
        if body != ctx.body_sha256:
            raise IdempotencyConflict
        if description.status == WorkflowExecutionStatus.RUNNING:
            return handle, None
        if description.status == WorkflowExecutionStatus.COMPLETED:
            output = await self._result(handle, self._start_timeout)
            if output.error is None or self._status_of(output.error.to_error()) < 500:
                return None, output
        return None, None

    async def _cancel(self, client: Client, workflow_id: str) -> None:
        with contextlib.suppress(RPCError, RuntimeError, TimeoutError):
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await asyncio.shield(client.get_workflow_handle(workflow_id).cancel())

    def _fell_back(self, ctx: CallContext, reason: str, detail: str = "") -> None:
        """The request runs directly after all: counted as a fallback and as a direct dispatch."""
        self._metrics.dispatched("direct")
        self._metrics.temporal_fallback(reason)
        self._events.publish("temporal_fallback", {"request_id": ctx.request_id, "reason": reason})
        if reason in ("result_lost", "workflow_failed", "start_failed", "no_worker"):
            log.warning("temporal_fallback", reason=reason, detail=detail, workflow_id=ctx.report.workflow_id)


async def _picked_up(handle: WorkflowHandle[Any, Any]) -> bool:
    try:
        description = await handle.describe(rpc_timeout=timedelta(seconds=1))
    except RPCError:
        return False
    info = description.raw_description
    started = info.pending_workflow_task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED
    return bool(started or info.workflow_execution_info.history_length > 2)


def _workflow_id(ctx: CallContext, prefix: str) -> str:
    if ctx.idempotency_key:
        # The key is scoped to the caller, so two clients' keys never meet.
        scope = f"{ctx.api_key_id or '-'}\0{ctx.idempotency_key}".encode()
        return f"{prefix}-idem-{hashlib.sha256(scope).hexdigest()[:40]}"
    return f"{prefix}-{ctx.request_id}"
