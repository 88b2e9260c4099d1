"""What crosses the Temporal boundary: workflow and activity inputs and outputs.

Explicit pydantic models (and the engine's frozen dataclasses) through a pydantic data converter; every field
added later gets a default, so histories written by an older gateway still replay. Engine errors travel as
``ErrorInfo`` and come back out as the very same exception class, so a provider error inside a workflow
reaches the client exactly as the direct path would send it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from temporalio.contrib.pydantic import PydanticPayloadConverter, ToJsonOptions
from temporalio.converter import DataConverter

from tokenhub.engine import (
    ChatCompletion,
    ChatRequest,
    Decision,
    EngineError,
    InvalidRequest,
    ModelNotFound,
    NoEligibleModel,
    Policy,
    RoutingFailed,
    TokenCount,
    UpstreamError,
)
from tokenhub.engine.errors import (
    ErrorClass,
    IneligibleReason,
    ModelNotAllowed,
    OutputInvalid,
    PhaseFailed,
    QuotaExceeded,
)
from tokenhub.engine.orchestration import CallResult, ModelCall, OrchestrationDirective, OrchestrationResult
from tokenhub.engine.shaping import Shaping
from tokenhub.temporal_integration.records import IdempotencyConflict, Origin, Path

CHAT_WORKFLOW = "ChatWorkflow"
ORCHESTRATION_WORKFLOW = "OrchestrationWorkflow"
CHAT_ACTIVITY = "ChatActivity"
MODEL_CALL_ACTIVITY = "ModelCallActivity"
RANK_ACTIVITY = "RankModelsActivity"
LOG_RESULT_ACTIVITY = "LogResultActivity"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class RequestInput(_Model):
    """What both workflows get: the request, who asked and when."""

    request_id: str
    request: ChatRequest
    # The request log's primary key, fixed by the gateway: a retried LogResultActivity, or a direct fallback
    # after Temporal was lost, writes the same row at most once.
    log_id: str
    api_key_id: str | None = None
    # Wall-clock seconds when the gateway received the request (latency is measured from there).
    received_at: float = 0.0
    # Seconds one model call may take; the gateway derives it from the policy's latency budget.
    timeout_s: float = 300.0
    shaping: Shaping = Shaping()

    def origin(self, mode: str) -> Origin:
        return Origin(
            request_id=self.request_id,
            log_id=self.log_id,
            received_at=self.received_at,
            mode=mode,
            stream=False,
            requested_model=self.request.model or "auto",
            api_key_id=self.api_key_id,
        )


class ChatInput(RequestInput):
    policy: Policy


class AttemptInfo(_Model):
    error_class: ErrorClass
    message: str
    provider_id: str = ""
    model_id: str = ""
    status: int | None = None
    retry_after: float | None = None

    @classmethod
    def of(cls, error: UpstreamError) -> AttemptInfo:
        return cls(
            error_class=error.error_class,
            message=error.message,
            provider_id=error.provider_id,
            model_id=error.model_id,
            status=error.status,
            retry_after=error.retry_after,
        )

    def to_error(self) -> UpstreamError:
        return UpstreamError(
            self.error_class,
            self.message,
            provider_id=self.provider_id,
            model_id=self.model_id,
            status=self.status,
            retry_after=self.retry_after,
        )


class ErrorInfo(_Model):
    """An ``EngineError`` as data. ``kind`` names its class; the other fields are what that class needs."""

    kind: Literal[
        "invalid_request",
        "model_not_found",
        "no_eligible_model",
        "routing_failed",
        "upstream",
        "output_invalid",
        "phase_failed",
        "idempotency_conflict",
        "quota_exceeded",
        "model_not_allowed",
    ]
    message: str
    param: str | None = None
    code: str | None = None
    model: str | None = None
    reasons: dict[str, IneligibleReason] = {}
    retry_after: float | None = None
    attempts: list[AttemptInfo] = []
    # output_invalid: what the rejected answer cost.
    provider: str | None = None
    tokens: TokenCount | None = None
    cost_usd: float = 0.0
    # phase_failed: the phase, the error that ended it, and how many calls were made (tokens and cost above).
    phase: str | None = None
    cause: ErrorInfo | None = None
    calls: int = 0
    # quota_exceeded: the key, its budget and the period it is spent for.
    account: str | None = None
    budget_usd: float | None = None
    period: str | None = None

    @classmethod
    def of(cls, error: EngineError) -> ErrorInfo:
        if isinstance(error, RoutingFailed):
            return cls(
                kind="routing_failed",
                message=error.message,
                attempts=[AttemptInfo.of(a) for a in error.attempts],
            )
        if isinstance(error, UpstreamError):
            return cls(kind="upstream", message=error.message, attempts=[AttemptInfo.of(error)])
        if isinstance(error, ModelNotFound):
            return cls(kind="model_not_found", message=error.message, model=error.model)
        if isinstance(error, NoEligibleModel):
            return cls(
                kind="no_eligible_model",
                message=error.message,
                reasons=error.reasons,
                retry_after=error.retry_after,
            )
        if isinstance(error, OutputInvalid):
            return cls(
                kind="output_invalid",
                message=error.message,
                model=error.model_id,
                provider=error.provider_id,
                tokens=TokenCount(error.input_tokens, error.output_tokens),
                cost_usd=error.cost_usd,
            )
        if isinstance(error, PhaseFailed):
            return cls(
                kind="phase_failed",
                message=error.message,
                phase=error.phase,
                cause=cls.of(error.cause),
                calls=error.calls,
                tokens=TokenCount(error.input_tokens, error.output_tokens),
                cost_usd=error.cost_usd,
            )
        if isinstance(error, QuotaExceeded):
            return cls(
                kind="quota_exceeded",
                message=error.message,
                account=error.account,
                budget_usd=error.budget_usd,
                period=error.period,
            )
        if isinstance(error, ModelNotAllowed):
            return cls(kind="model_not_allowed", message=error.message, model=error.model)
        if isinstance(error, IdempotencyConflict):
            return cls(kind="idempotency_conflict", message=error.message)
        if isinstance(error, InvalidRequest):
            return cls(kind="invalid_request", message=error.message, param=error.param, code=error.code)
        raise TypeError(f"no ErrorInfo for {type(error).__name__}")

    def to_error(self) -> EngineError:
        if self.kind == "routing_failed":
            return RoutingFailed([a.to_error() for a in self.attempts])
        if self.kind == "upstream":
            return self.attempts[0].to_error()
        if self.kind == "model_not_found":
            return ModelNotFound(self.model or "")
        if self.kind == "no_eligible_model":
            return NoEligibleModel(dict(self.reasons), retry_after=self.retry_after)
        if self.kind == "output_invalid":
            tokens = self.tokens or TokenCount(0, 0)
            return OutputInvalid(
                self.message,
                model_id=self.model or "",
                provider_id=self.provider or "",
                input_tokens=tokens.input_tokens,
                output_tokens=tokens.output_tokens,
                cost_usd=self.cost_usd,
            )
        if self.kind == "phase_failed" and self.cause is not None:
            spent = self.tokens or TokenCount(0, 0)
            return PhaseFailed(
                self.phase or "",
                self.cause.to_error(),
                calls=self.calls,
                input_tokens=spent.input_tokens,
                output_tokens=spent.output_tokens,
                cost_usd=self.cost_usd,
            )
        if self.kind == "quota_exceeded":
            return QuotaExceeded(self.account or "", self.budget_usd or 0.0, self.period or "")
        if self.kind == "model_not_allowed":
            return ModelNotAllowed(self.model or "")
        if self.kind == "idempotency_conflict":
            return IdempotencyConflict()
        return InvalidRequest(self.message, param=self.param, code=self.code)


class Outcome(_Model):
    """How a request ended, as LogResultActivity records it."""

    model_id: str = ""
    provider_id: str = ""
    reason: str = ""
    attempts: int = 0
    tokens: TokenCount | None = None
    cost_usd: float = 0.0
    error: ErrorInfo | None = None
    cancelled: bool = False


class ChatOutput(_Model):
    """ChatActivity's answer: a completion and how it was routed, or the engine's error as a result."""

    decision: Decision | None = None
    response: ChatCompletion | None = None
    tokens: TokenCount | None = None
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    # Of which waiting on upstreams (what x-tokenhub-overhead-ms leaves out).
    upstream_ms: float = 0.0
    error: ErrorInfo | None = None
    # The client went away (and the request was stopped) before ChatActivity finished.
    cancelled: bool = False

    def outcome(self) -> Outcome:
        decision = self.decision
        return Outcome(
            model_id=decision.model_id if decision else "",
            provider_id=decision.provider_id if decision else "",
            reason=decision.reason if decision else "",
            attempts=decision.attempts if decision else 0,
            tokens=self.tokens,
            cost_usd=self.cost_usd,
            error=self.error,
            cancelled=self.cancelled,
        )


class OrchestrationInput(RequestInput):
    directive: OrchestrationDirective
    # What every call shares: the paying API key and the models it may use.
    policy: Policy = Policy()


class OrchestrationOutput(_Model):
    result: OrchestrationResult | None = None
    error: ErrorInfo | None = None
    cancelled: bool = False
    upstream_ms: float = 0.0

    def outcome(self) -> Outcome:
        result = self.result
        if result is None:
            return Outcome(error=self.error, cancelled=self.cancelled)
        return Outcome(
            model_id=result.negotiated_model,
            provider_id=result.provider_id,
            reason=result.routing_reason,
            attempts=result.calls,
            tokens=result.tokens,
            cost_usd=result.cost_usd,
        )


class ModelCallInput(_Model):
    """One orchestration call, run as ModelCallActivity; ``log_id`` ties it to its request."""

    log_id: str
    call: ModelCall


class ModelCallOutput(_Model):
    result: CallResult | None = None
    error: ErrorInfo | None = None
    cancelled: bool = False
    upstream_ms: float = 0.0


class RankInput(_Model):
    request: ChatRequest
    policy: Policy
    exclude: list[str] = []


class RankOutput(_Model):
    models: list[str] = []
    error: ErrorInfo | None = None


class LogInput(_Model):
    """What LogResultActivity records: the request as the gateway saw it and how it ended."""

    origin: Origin
    outcome: Outcome
    path: Path = "temporal"


class _PayloadConverter(PydanticPayloadConverter):
    def __init__(self) -> None:
        # Only the fields a client actually sent travel, so the upstream sees exactly the same request.
        super().__init__(ToJsonOptions(exclude_unset=True))


DATA_CONVERTER = DataConverter(payload_converter_class=_PayloadConverter)
