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
from tokenhub.engine.errors import ErrorClass, IneligibleReason

CHAT_WORKFLOW = "ChatWorkflow"
CHAT_ACTIVITY = "ChatActivity"
LOG_RESULT_ACTIVITY = "LogResultActivity"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ChatInput(_Model):
    request_id: str
    request: ChatRequest
    policy: Policy
    # The request log's primary key, fixed by the gateway: a retried LogResultActivity, or a direct fallback
    # after Temporal was lost, writes the same row at most once.
    log_id: str
    api_key_id: str | None = None
    # Wall-clock seconds when the gateway received the request (latency is measured from there).
    received_at: float = 0.0
    # Seconds ChatActivity may take; the gateway derives it from the policy's latency budget.
    timeout_s: float = 300.0


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

    kind: Literal["invalid_request", "model_not_found", "no_eligible_model", "routing_failed", "upstream"]
    message: str
    param: str | None = None
    code: str | None = None
    model: str | None = None
    reasons: dict[str, IneligibleReason] = {}
    retry_after: float | None = None
    attempts: list[AttemptInfo] = []

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
        return InvalidRequest(self.message, param=self.param, code=self.code)


class ChatOutput(_Model):
    """ChatActivity's answer: a completion and how it was routed, or the engine's error as a result."""

    decision: Decision | None = None
    response: ChatCompletion | None = None
    tokens: TokenCount | None = None
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: ErrorInfo | None = None
    # The workflow was cancelled (the client went away) before ChatActivity finished.
    cancelled: bool = False


class LogInput(_Model):
    """What LogResultActivity records: the request as the gateway saw it and what became of it."""

    chat: ChatInput
    output: ChatOutput
    path: str = "temporal"


class _PayloadConverter(PydanticPayloadConverter):
    def __init__(self) -> None:
        # Only the fields a client actually sent travel, so the upstream sees exactly the same request.
        super().__init__(ToJsonOptions(exclude_unset=True))


DATA_CONVERTER = DataConverter(payload_converter_class=_PayloadConverter)
