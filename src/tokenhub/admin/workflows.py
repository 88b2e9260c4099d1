"""``GET /admin/v1/workflows[/{id}[/history]]``: this gateway's workflows, as Temporal records them.

Only workflows on this gateway's task queue are shown. Every Temporal call is bounded; a Temporal that is
off, unreachable or failing never makes these endpoints answer 500. Visibility (the list) is eventually
consistent: a workflow that just started or finished may show its previous state for a moment; ``describe``
and ``history`` read the workflow itself and are always current.

Prompt text and answers are Temporal payloads like any other, but they are shown only with
``TOKENHUB_ADMIN_SHOW_CONTENT=true``: by default the input is summarised (model, mode, message count).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request
from starlette.responses import Response
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, PendingActivityState, WorkflowExecutionStatus
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflow.v1 import PendingActivityInfo, WorkflowExecutionInfo
from temporalio.client import Client, WorkflowHistoryEventAsyncIterator, WorkflowHistoryEventFilterType
from temporalio.service import RPCError, RPCStatusCode

from tokenhub.admin.common import AdminError, admin_error, admin_json, choice_param, int_param, iso_time, page
from tokenhub.engine import TokenCount
from tokenhub.store import RequestLog
from tokenhub.temporal_integration.flag import TemporalFlag
from tokenhub.temporal_integration.manager import TemporalManager
from tokenhub.temporal_integration.records import Origin, error_row
from tokenhub.temporal_integration.types import (
    CHAT_WORKFLOW,
    ORCHESTRATION_WORKFLOW,
    ChatInput,
    ChatOutput,
    ErrorInfo,
    OrchestrationInput,
    OrchestrationOutput,
    Outcome,
)

# One Temporal RPC, and one whole admin request (a history can take several pages).
RPC_TIMEOUT = timedelta(seconds=3)
REQUEST_TIMEOUT_S = 10.0
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_TEXT = 500  # characters of a failure message or reason
MAX_WORKFLOW_ID = 1000  # Temporal's own default limit on ids

# The statuses this API speaks, and how Temporal's list filter spells them (it refuses 'RUNNING').
STATUSES: dict[str, str] = {
    "RUNNING": "Running",
    "COMPLETED": "Completed",
    "FAILED": "Failed",
    "CANCELED": "Canceled",
    "TERMINATED": "Terminated",
    "CONTINUED_AS_NEW": "ContinuedAsNew",
    "TIMED_OUT": "TimedOut",
}
TYPES = (CHAT_WORKFLOW, ORCHESTRATION_WORKFLOW)
_PREFIXES = ("chat-", "plan-")
_IDEMPOTENT = re.compile(r"idem-[0-9a-f]{40}")
_CURSOR_VERSION = b"\x01"
_CURSOR_DIGEST = 8


class WorkflowEndpoints:
    """The handlers. ``show_content`` adds the request's messages (and the answer) to ``describe``."""

    def __init__(self, manager: TemporalManager, flag: TemporalFlag, *, show_content: bool) -> None:
        self._manager = manager
        self._flag = flag
        self._show_content = show_content

    async def list(self, request: Request) -> Response:
        return await _guarded(self._list(request))

    async def describe(self, request: Request) -> Response:
        return await _guarded(self._describe(request))

    async def history(self, request: Request) -> Response:
        return await _guarded(self._history(request))

    async def _list(self, request: Request) -> Response:
        limit = int_param(request, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
        status = choice_param(request, "status", tuple(STATUSES))
        kind = choice_param(request, "type", TYPES)
        query = _list_query(self._manager.target.task_queue, kind, status)
        raw_cursor = request.query_params.get("cursor")
        token = _decode_cursor(raw_cursor, query) if raw_cursor else None
        if not self._flag.enabled:
            return admin_json({"items": [], "next_cursor": None, "temporal_enabled": False})
        client = self._manager.client
        if client is None:
            return admin_json({"items": [], "next_cursor": None, "temporal_connected": False})
        listing = client.list_workflows(
            query, page_size=limit, next_page_token=token, rpc_timeout=RPC_TIMEOUT
        )
        await listing.fetch_next_page()
        executions = listing.current_page or []
        items = [_summary(e.raw_info) for e in executions]
        next_token = listing.next_page_token
        return page(items, _encode_cursor(next_token, query) if next_token else None)

    async def _describe(self, request: Request) -> Response:
        workflow_id, run_id = _target(request)
        client = self._client()
        try:
            description = await client.get_workflow_handle(workflow_id, run_id=run_id).describe(
                rpc_timeout=RPC_TIMEOUT
            )
            info = description.raw_info
            if info.task_queue != self._manager.target.task_queue:
                raise _unknown(workflow_id)
            # The input is the first event of the run just described; the result, its closing event.
            run = client.get_workflow_handle(workflow_id, run_id=info.execution.run_id)
            started = await _first_event(run.fetch_history_events(page_size=1, rpc_timeout=RPC_TIMEOUT))
            closed = None
            if info.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
                closed = await _first_event(
                    run.fetch_history_events(
                        event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT, rpc_timeout=RPC_TIMEOUT
                    )
                )
        except RPCError as exc:
            raise _not_found_or(exc, workflow_id) from None
        body = _summary(info)
        body["input"] = await self._input_summary(client, info.type.name, started)
        if body["request_id"] is None and body["input"] is not None:
            body["request_id"] = body["input"].get("request_id")  # an Idempotency-Key's workflow
        body["result"] = await self._result_summary(client, info.type.name, closed)
        body["pending_activities"] = [_pending(p) for p in description.raw_description.pending_activities]
        return admin_json(body)

    async def _history(self, request: Request) -> Response:
        workflow_id, run_id = _target(request)
        client = self._client()
        events: list[HistoryEvent] = []
        try:
            async for event in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events(
                rpc_timeout=RPC_TIMEOUT
            ):
                events.append(event)
        except RPCError as exc:
            raise _not_found_or(exc, workflow_id) from None
        if not events or _task_queue(events[0]) != self._manager.target.task_queue:
            raise _unknown(workflow_id)
        return admin_json(
            {
                "workflow_id": workflow_id,
                "run_id": events[0].workflow_execution_started_event_attributes.original_execution_run_id
                or None,
                "events": _readable(events),
            }
        )

    def _client(self) -> Client:
        client = self._manager.client
        if client is None:
            why = "is disabled" if not self._flag.enabled else "is not connected"
            raise AdminError(503, f"Temporal {why}: workflows cannot be read now.", "temporal_unavailable")
        return client

    async def _input_summary(
        self, client: Client, workflow_type: str, started: HistoryEvent | None
    ) -> dict[str, Any] | None:
        if started is None or not started.HasField("workflow_execution_started_event_attributes"):
            return None
        payloads = started.workflow_execution_started_event_attributes.input.payloads
        hint: type[ChatInput | OrchestrationInput]
        hint = OrchestrationInput if workflow_type == ORCHESTRATION_WORKFLOW else ChatInput
        decoded = await _decode(client, payloads, hint)
        if isinstance(decoded, str):
            return {"decode_error": decoded}
        request = decoded.request
        summary: dict[str, Any] = {
            "request_id": decoded.request_id,
            "requested_model": request.model or "auto",
            "mode": decoded.policy.mode if isinstance(decoded, ChatInput) else decoded.directive.mode,
            "message_count": len(request.messages),
            "stream": request.stream,
            "api_key_id": decoded.api_key_id,
        }
        if isinstance(decoded, OrchestrationInput):
            directive = decoded.directive
            summary["iterations"] = directive.iterations
            summary["primary_model_id"] = directive.primary_model_id
            summary["review_model_id"] = directive.review_model_id
        if self._show_content:
            summary["messages"] = [m.model_dump(mode="json", exclude_none=True) for m in request.messages]
        return summary

    async def _result_summary(
        self, client: Client, workflow_type: str, closed: HistoryEvent | None
    ) -> dict[str, Any] | None:
        if closed is None:
            return None
        which = closed.WhichOneof("attributes")
        if which != "workflow_execution_completed_event_attributes":
            return _unfinished(closed)
        payloads = closed.workflow_execution_completed_event_attributes.result.payloads
        hint: type[ChatOutput | OrchestrationOutput]
        hint = OrchestrationOutput if workflow_type == ORCHESTRATION_WORKFLOW else ChatOutput
        output = await _decode(client, payloads, hint)
        if isinstance(output, str):
            return {"outcome": "unknown", "decode_error": output}
        summary = _outcome(output.outcome())
        if isinstance(output, ChatOutput):
            summary["latency_ms"] = round(output.latency_ms, 2)
            if self._show_content and output.response is not None:
                summary["response"] = output.response.model_dump(mode="json", exclude_unset=True)
        elif self._show_content and output.result is not None:
            summary["response"] = output.result.response_json()
        return summary


async def _guarded(work: Awaitable[Response]) -> Response:
    """Run one handler: admin errors become their JSON, and Temporal trouble a 502, never a traceback."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await work
    except AdminError as exc:
        return admin_error(exc.status, exc.message, exc.kind)
    except TimeoutError:
        return admin_error(502, f"Temporal did not answer within {REQUEST_TIMEOUT_S:g}s.", "temporal_error")
    except RPCError as exc:
        message = f"Temporal answered {exc.status.name}: {_short(exc.message)}"
        return admin_error(502, message, "temporal_error")
    except RuntimeError as exc:  # the SDK's bridge: a client closed or lost meanwhile
        return admin_error(502, f"Temporal could not be asked: {_short(str(exc))}", "temporal_error")


def _target(request: Request) -> tuple[str, str | None]:
    workflow_id: str = request.path_params["workflow_id"]
    if not workflow_id or len(workflow_id) > MAX_WORKFLOW_ID:
        raise _unknown(workflow_id)
    return workflow_id, request.query_params.get("run_id") or None


def _unknown(workflow_id: str) -> AdminError:
    return AdminError(404, f"No workflow {_short(workflow_id, 200)!r} on this gateway's task queue.")


def _not_found_or(exc: RPCError, workflow_id: str) -> Exception:
    """NOT_FOUND means no such workflow, unless it is the namespace that is missing (a Temporal fault)."""
    if exc.status != RPCStatusCode.NOT_FOUND:
        return exc
    if any(d.type_url.endswith(".NamespaceNotFoundFailure") for d in exc.grpc_status.details):
        return exc
    return _unknown(workflow_id)


# -- the list ---------------------------------------------------------------------------------------------


def _list_query(task_queue: str, kind: str | None, status: str | None) -> str:
    clauses = [f"TaskQueue = {_quoted(task_queue)}"]
    if kind is not None:
        clauses.append(f"WorkflowType = {_quoted(kind)}")
    if status is not None:
        clauses.append(f"ExecutionStatus = {_quoted(STATUSES[status])}")
    return " AND ".join(clauses)


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _encode_cursor(token: bytes, query: str) -> str:
    """Temporal's page token, tied to the query it pages (a cursor cannot be reused with other filters)."""
    raw = _CURSOR_VERSION + _cursor_digest(token, query) + token
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, query: str) -> bytes:
    invalid = AdminError(
        400, "cursor is not valid: pass next_cursor from the previous page, with the same filters"
    )
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise invalid from None
    head, digest = raw[:1], raw[1 : 1 + _CURSOR_DIGEST]
    token = raw[1 + _CURSOR_DIGEST :]
    if head != _CURSOR_VERSION or not token or digest != _cursor_digest(token, query):
        raise invalid
    return token


def _cursor_digest(token: bytes, query: str) -> bytes:
    return hashlib.sha256(query.encode() + b"\0" + token).digest()[:_CURSOR_DIGEST]


def _summary(info: WorkflowExecutionInfo) -> dict[str, Any]:
    start = _time(info.start_time) if info.HasField("start_time") else None
    close = _time(info.close_time) if info.HasField("close_time") else None
    duration = round((close - start).total_seconds() * 1000) if start and close else None
    workflow_id = info.execution.workflow_id
    return {
        "workflow_id": workflow_id,
        "run_id": info.execution.run_id,
        "type": info.type.name,
        "status": _status(info.status),
        "start_time": iso_time(start),
        "close_time": iso_time(close),
        "duration_ms": duration,
        "request_id": request_id_of(workflow_id),
    }


def request_id_of(workflow_id: str) -> str | None:
    """``chat-<request id>`` / ``plan-<request id>``; an Idempotency-Key's workflow names no request."""
    for prefix in _PREFIXES:
        if workflow_id.startswith(prefix):
            rest = workflow_id[len(prefix) :]
            return None if not rest or _IDEMPOTENT.fullmatch(rest) else rest
    return None


def _status(value: int) -> str | None:
    if value == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_UNSPECIFIED:
        return None
    return _enum_name(WorkflowExecutionStatus, value, "WORKFLOW_EXECUTION_STATUS_")


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    return name.removeprefix(prefix)


def _time(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


# -- describe ---------------------------------------------------------------------------------------------


async def _first_event(events: WorkflowHistoryEventAsyncIterator) -> HistoryEvent | None:
    async for event in events:
        return event
    return None


async def _decode(client: Client, payloads: Sequence[Payload], hint: type[Any]) -> Any:
    """The payload as ``hint``, or why it could not be read (a history written by another version)."""
    if len(payloads) != 1:
        return f"expected one payload, found {len(payloads)}"
    try:
        (value,) = await client.data_converter.decode(list(payloads), [hint])
    except Exception as exc:  # noqa: BLE001 - any converter failure is reported, not raised
        return _short(f"{type(exc).__name__}: {exc}", 200)
    return value


def _outcome(outcome: Outcome) -> dict[str, Any]:
    """How the request ended, counted as its request-log row counts it (a failure's spend included)."""
    model, provider, attempts = outcome.model_id, outcome.provider_id, outcome.attempts
    tokens, cost = outcome.tokens, outcome.cost_usd
    error_class = None
    if outcome.error is not None:
        spent = _spent(outcome.error)
        if spent is not None:
            model, provider, attempts, cost = spent.model, spent.provider, spent.attempts, spent.cost_usd
            used = spent.input_tokens or spent.output_tokens
            tokens = (
                TokenCount(spent.input_tokens, spent.output_tokens, spent.tokens_estimated) if used else None
            )
            error_class = spent.error_class
    return {
        "outcome": "cancelled" if outcome.cancelled else "error" if outcome.error is not None else "ok",
        "model": model or None,
        "provider": provider or None,
        "reason": outcome.reason or None,
        "attempts": attempts,
        "tokens": None
        if tokens is None
        else {"input": tokens.input_tokens, "output": tokens.output_tokens, "estimated": tokens.estimated},
        "cost_usd": cost,
        "error": None if outcome.error is None else _error(outcome.error, error_class),
    }


def _spent(error: ErrorInfo) -> RequestLog | None:
    """What the request log recorded for this failure: the same function builds both."""
    nobody = Origin(request_id="", log_id="", received_at=0.0, mode="", stream=False, requested_model="")
    try:
        return error_row(nobody, error.to_error(), path="temporal", status=0)
    except Exception:  # noqa: BLE001 - an error this version cannot rebuild is shown as recorded, unsummed
        return None


def _error(error: ErrorInfo, error_class: str | None) -> dict[str, Any]:
    shown: dict[str, Any] = {"kind": error.kind, "class": error_class, "message": _short(error.message)}
    if error.phase is not None:
        shown["phase"] = error.phase
    cause = error.cause or error
    if error.cause is not None:
        shown["cause"] = {"kind": cause.kind, "message": _short(cause.message)}
    if cause.attempts:
        shown["attempts"] = [
            {
                "provider": a.provider_id or None,
                "model": a.model_id or None,
                "error_class": a.error_class,
                "status": a.status,
                "message": _short(a.message, 200),
            }
            for a in cause.attempts
        ]
    return shown


def _unfinished(closed: HistoryEvent) -> dict[str, Any]:
    """A workflow that did not complete: how it ended instead."""
    name = _event_type(closed.event_type)
    outcome = "workflow_" + _enum_name(EventType, closed.event_type, "EVENT_TYPE_WORKFLOW_EXECUTION_").lower()
    summary: dict[str, Any] = {"outcome": outcome, "event": name}
    failure = _failure_of(closed)
    if failure is not None:
        summary["failure"] = failure
    if closed.HasField("workflow_execution_terminated_event_attributes"):
        summary["reason"] = _short(closed.workflow_execution_terminated_event_attributes.reason) or None
    return summary


def _pending(activity: PendingActivityInfo) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "activity_type": activity.activity_type.name,
        "activity_id": activity.activity_id,
        "state": _enum_name(PendingActivityState, activity.state, "PENDING_ACTIVITY_STATE_"),
        "attempt": activity.attempt,
    }
    if activity.HasField("last_failure"):
        shown["last_failure"] = _failure_text(activity.last_failure)
    return shown


# -- history ----------------------------------------------------------------------------------------------


def _task_queue(first: HistoryEvent) -> str | None:
    if not first.HasField("workflow_execution_started_event_attributes"):
        return None
    return first.workflow_execution_started_event_attributes.task_queue.name


def _readable(events: Sequence[HistoryEvent]) -> list[dict[str, Any]]:
    scheduled: dict[int, tuple[str, str]] = {}  # ActivityTaskScheduled event id -> (type, id)
    shown = []
    for event in events:
        item: dict[str, Any] = {
            "event_id": event.event_id,
            "event_type": _event_type(event.event_type),
            "timestamp": iso_time(_time(event.event_time)) if event.HasField("event_time") else None,
        }
        which = event.WhichOneof("attributes")
        attrs: Any = getattr(event, which) if which is not None else None
        if which == "activity_task_scheduled_event_attributes":
            scheduled[event.event_id] = (attrs.activity_type.name, attrs.activity_id)
            item["activity_type"], item["activity_id"] = scheduled[event.event_id]
        elif which == "marker_recorded_event_attributes":
            item.update(_marker(attrs.details))
        elif which is not None and which.startswith("activity_task_"):
            # Started, completed, failed…: name the activity their ActivityTaskScheduled event named.
            known = scheduled.get(attrs.scheduled_event_id)
            if known is not None:
                item["activity_type"], item["activity_id"] = known
            if which == "activity_task_started_event_attributes":
                item["attempt"] = attrs.attempt
        failure = _failure_of(event)
        if failure is not None:
            item["failure"] = failure
        shown.append(item)
    return shown


def _event_type(value: int) -> str:
    """``EVENT_TYPE_ACTIVITY_TASK_SCHEDULED`` → ``ActivityTaskScheduled``."""
    name = _enum_name(EventType, value, "EVENT_TYPE_")
    return "".join(word.capitalize() for word in name.split("_"))


def _marker(details: Any) -> dict[str, Any]:
    """A local activity's marker names the activity in its ``data`` detail (JSON written by the SDK core)."""
    if "data" not in details or not details["data"].payloads:
        return {}
    try:
        data = orjson.loads(details["data"].payloads[0].data)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    shown = {}
    for key in ("activity_type", "activity_id", "attempt"):
        if key in data:
            shown[key] = data[key]
    return shown


def _failure_of(event: HistoryEvent) -> str | None:
    which = event.WhichOneof("attributes")
    if which is None:
        return None
    attrs: Message = getattr(event, which)
    if "failure" not in attrs.DESCRIPTOR.fields_by_name or not attrs.HasField("failure"):
        return None
    failure: Failure = getattr(attrs, "failure")  # noqa: B009 - not every attributes message has it
    return _failure_text(failure)


def _failure_text(failure: Failure) -> str:
    """The failure's message and its causes', e.g. ``Activity task failed: boom``."""
    messages: list[str] = []
    current: Failure | None = failure
    while current is not None and len(messages) < 4:
        if current.message:
            messages.append(current.message)
        current = current.cause if current.HasField("cause") else None
    return _short(": ".join(messages) or "failed")


def _short(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["STATUSES", "TYPES", "WorkflowEndpoints", "request_id_of"]
