"""TokenHub's native API: ``POST /v1/chat`` (a policy-routed chat) and ``POST /v1/plan`` (orchestration).

Shapes follow the Go TokenHub's, so its clients can switch: both answer
``{"negotiated_model", "estimated_cost_usd", "routing_reason", "response"}``.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.types import Receive, Scope, Send

from tokenhub.config import Mode
from tokenhub.engine import ChatRequest, Decision, Engine, InvalidRequest, ModelNotFound, Policy, Registry
from tokenhub.engine.directives import extract_directives
from tokenhub.engine.orchestration import OrchestrationDirective
from tokenhub.engine.shaping import OutputFormat, Shaping, check_schema
from tokenhub.gateway.chat import request_policy
from tokenhub.gateway.exchange import (
    Dispatcher,
    Endpoint,
    call_context,
    dispatch_headers,
    keyed,
    routing_headers,
    send_json,
    send_stream,
    unless_disconnected,
)
from tokenhub.gateway.parsing import invalid_request, parse_body
from tokenhub.gateway.turns import StreamTurns
from tokenhub.temporal_integration.records import DispatchReport

# Parameters that are the envelope's business, not sampling settings.
_RESERVED = {"messages", "model", "stream", "stream_options"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NativeRequest(_Strict):
    messages: list[Any] = Field(min_length=1)
    model_hint: str | None = None
    parameters: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    stream: bool = False
    # Accepted for compatibility; the gateway estimates tokens and ids requests itself.
    id: str | None = None
    estimated_input_tokens: int | None = None
    meta: dict[str, Any] | None = None


class NativePolicy(_Strict):
    mode: Mode | None = None
    max_budget_usd: float | None = Field(default=None, gt=0, le=100)
    max_latency_ms: float | None = Field(default=None, gt=0, le=300_000)
    min_weight: float | None = Field(default=None, ge=0, le=10)


class NativeOutputFormat(OutputFormat):
    # The Go API's name for an output schema (as JSON text); here it is enforced.
    schema_: dict[str, Any] | str | None = Field(default=None, alias="schema")


class NativeChatBody(_Strict):
    request: NativeRequest
    policy: NativePolicy | None = None
    output_format: NativeOutputFormat | None = None
    capabilities: dict[str, Any] | None = None


class OrchestrationBody(OrchestrationDirective):
    """The orchestration as clients send it: strict, an empty mode meaning planning, and an output schema
    (an object, or JSON text as the Go API took it) that the gateway checks itself."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    mode: Literal["adversarial", "vote", "refine", "planning", ""] = "planning"  # type: ignore[assignment]
    output_schema: dict[str, Any] | str | None = None

    @field_validator("mode")
    @classmethod
    def _empty_is_planning(cls, value: str) -> str:
        return value or "planning"


class PlanBody(_Strict):
    request: NativeRequest
    orchestration: OrchestrationBody = OrchestrationBody()
    output_format: NativeOutputFormat | None = None
    capabilities: dict[str, Any] | None = None


class NativeChatEndpoint(Endpoint):
    def __init__(
        self,
        dispatcher: Dispatcher,
        engine: Engine,
        turns: StreamTurns,
        *,
        default_mode: Mode,
        max_body_bytes: int,
    ) -> None:
        super().__init__(max_body_bytes)
        self._dispatcher = dispatcher
        self._engine = engine
        self._turns = turns
        self._default_mode = default_mode

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, report: DispatchReport
    ) -> None:
        parsed = parse_body(body, NativeChatBody)
        request, directives = extract_directives(_chat_request(parsed.request, self._engine.registry))
        policy = keyed(
            scope, directives.apply(request_policy(scope, _policy(parsed.policy, self._default_mode)))
        )
        schema = directives.output_schema or _schema(parsed.request.output_schema, "request.output_schema")
        shaping = _shaping(parsed.output_format, schema)
        ctx = call_context(scope, body, report)
        if request.stream:
            opening = self._dispatcher.open_stream(request, policy, ctx)
            stream = await unless_disconnected(scope, receive, opening)
            await send_stream(stream, scope, receive, send, dispatch_headers(report), self._turns)
            return
        answering = self._dispatcher.chat(request, policy, ctx, shaping)
        routed = await unless_disconnected(scope, receive, answering)
        decision = routed.decision
        envelope = _envelope(
            decision.model_id, routed.cost_usd, decision.reason, routed.completion.as_openai()
        )
        await send_json(send, envelope, [*routing_headers(decision), *dispatch_headers(report)])


class PlanEndpoint(Endpoint):
    def __init__(self, dispatcher: Dispatcher, engine: Engine, *, max_body_bytes: int) -> None:
        super().__init__(max_body_bytes)
        self._dispatcher = dispatcher
        self._engine = engine

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, report: DispatchReport
    ) -> None:
        parsed = parse_body(body, PlanBody)
        if parsed.request.stream:
            raise InvalidRequest("/v1/plan does not stream.", param="request.stream", code="invalid_value")
        request = _chat_request(parsed.request, self._engine.registry)
        spec = parsed.orchestration
        for field in ("primary_model_id", "review_model_id"):
            model_id = getattr(spec, field)
            if model_id and self._engine.registry.get_routable(model_id) is None:
                raise ModelNotFound(model_id)
        directive = OrchestrationDirective.model_validate(spec.model_dump(exclude={"output_schema"}))
        shaping = Shaping(output_schema=_plan_schema(parsed))
        ctx = call_context(scope, body, report)
        plan = self._dispatcher.plan(request, directive, ctx, shaping, keyed(scope, Policy()))
        result = await unless_disconnected(scope, receive, plan)
        decision = Decision(result.negotiated_model, result.provider_id, result.routing_reason, result.calls)
        envelope = _envelope(
            result.negotiated_model, result.cost_usd, result.routing_reason, result.response_json()
        )
        await send_json(send, envelope, [*routing_headers(decision), *dispatch_headers(report)])


def _plan_schema(parsed: PlanBody) -> dict[str, Any] | None:
    """The schema the composite response must match, wherever the client put it. The rest of
    ``output_format`` shapes text, and a plan's response is an object: refused rather than ignored."""
    output_format = parsed.output_format
    if output_format is not None:
        shaping = output_format.model_dump(exclude={"schema_"}, exclude_defaults=True)
        if shaping:
            field = next(iter(shaping))
            raise InvalidRequest(
                "/v1/plan answers with an object; only output_format.schema applies to it.",
                param=f"output_format.{field}",
                code="invalid_value",
            )
    candidates = (
        (parsed.orchestration.output_schema, "orchestration.output_schema"),
        (output_format.schema_ if output_format else None, "output_format.schema"),
        (parsed.request.output_schema, "request.output_schema"),
    )
    return next((_schema(value, param) for value, param in candidates if value is not None), None)


def _envelope(model: str, cost_usd: float, reason: str, response: object) -> dict[str, object]:
    return {
        "negotiated_model": model,
        "estimated_cost_usd": cost_usd,
        "routing_reason": reason,
        "response": response,
    }


def _chat_request(native: NativeRequest, registry: Registry) -> ChatRequest:
    """The native request as a chat request: the hint becomes the preferred model when it names one
    (``vendor/model`` too); otherwise the engine chooses."""
    parameters = native.parameters or {}
    reserved = sorted(_RESERVED & parameters.keys())
    if reserved:
        raise InvalidRequest(
            f"'{reserved[0]}' is not a parameter; it belongs to the request.",
            param=f"request.parameters.{reserved[0]}",
            code="invalid_value",
        )
    model = ""
    if native.model_hint:
        bare = native.model_hint.rpartition("/")[2]
        model = next((m for m in (native.model_hint, bare) if registry.get_routable(m)), "")
    try:
        return ChatRequest.model_validate(
            {**parameters, "model": model, "messages": native.messages, "stream": native.stream}
        )
    except ValidationError as exc:
        raise _located(exc, parameters) from None


def _located(exc: ValidationError, parameters: dict[str, Any]) -> InvalidRequest:
    """Name the field where the client wrote it: ``request.messages[0]…`` or ``request.parameters.x``."""
    first = exc.errors(include_url=False)[0]
    top = first["loc"][0] if first["loc"] else ""
    return invalid_request(exc, "request.parameters" if top in parameters else "request")


def _policy(native: NativePolicy | None, default_mode: Mode) -> Policy:
    if native is None:
        return Policy(mode=default_mode)
    return Policy(
        mode=native.mode or default_mode,
        max_budget_usd=native.max_budget_usd,
        max_latency_ms=native.max_latency_ms,
        min_weight=native.min_weight or 0.0,
    )


def _schema(value: dict[str, Any] | str | None, param: str) -> dict[str, Any] | None:
    """A JSON Schema given as an object or as JSON text, checked; None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidRequest(
                "The output schema is not valid JSON.", param=param, code="invalid_schema"
            ) from None
    return check_schema(value, param=param)


def _shaping(output_format: NativeOutputFormat | None, schema: dict[str, Any] | None) -> Shaping:
    if output_format is not None and schema is None:
        schema = _schema(output_format.schema_, "output_format.schema")
    plain = (
        None
        if output_format is None
        else OutputFormat.model_validate(output_format.model_dump(exclude={"schema_"}))
    )
    return Shaping(output_format=plain, output_schema=schema)
