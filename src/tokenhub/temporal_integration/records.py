"""Request-log rows, built the same way whichever path ran the request (direct or a workflow)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from tokenhub.engine import (
    EngineError,
    ModelNotFound,
    NoEligibleModel,
    OutputInvalid,
    PhaseFailed,
    Routed,
    RoutingFailed,
    TokenCount,
    UpstreamError,
)
from tokenhub.store import RequestLog
from tokenhub.telemetry.ids import ordered_id

Path = Literal["direct", "temporal"]


class IdempotencyConflict(EngineError):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was already used with a different request body.")


CLIENT_CLOSED = 499


@dataclass
class DispatchReport:
    """How a request was run, filled in by the dispatcher for the gateway's response headers."""

    path: Path = "direct"
    workflow_id: str | None = None
    replayed: bool = False
    # Set once a dispatcher has taken the request (errors before that, like a bad body, name no path).
    decided: bool = False

    def took(self, path: Path, workflow_id: str | None = None) -> None:
        self.path, self.workflow_id, self.decided = path, workflow_id, True


@dataclass(frozen=True)
class CallContext:
    """Who is asking and when. ``log_id`` is the request log's key, fixed once per request."""

    request_id: str
    log_id: str = field(default_factory=ordered_id)
    received_at: float = field(default_factory=time.time)
    api_key_id: str | None = None
    idempotency_key: str | None = None
    body_sha256: str | None = None
    report: DispatchReport = field(default_factory=DispatchReport)


@dataclass(frozen=True)
class Origin:
    """The request-side fields of a log row."""

    request_id: str
    log_id: str
    received_at: float
    mode: str
    stream: bool
    requested_model: str
    api_key_id: str | None = None

    @classmethod
    def of(cls, ctx: CallContext, mode: str, *, requested_model: str, stream: bool) -> Origin:
        return cls(
            request_id=ctx.request_id,
            log_id=ctx.log_id,
            received_at=ctx.received_at,
            mode=mode,
            stream=stream,
            requested_model=requested_model or "auto",
            api_key_id=ctx.api_key_id,
        )


def row(
    origin: Origin,
    *,
    path: Path,
    status: int,
    model: str,
    provider: str,
    reason: str,
    attempts: int,
    tokens: TokenCount,
    cost_usd: float,
    ttft_ms: float | None = None,
    error_class: str | None = None,
    error_message: str | None = None,
) -> RequestLog:
    return RequestLog(
        id=origin.log_id,
        request_id=origin.request_id,
        created_at=datetime.now(UTC),
        model=model,
        provider=provider,
        mode=origin.mode,
        path=path,
        stream=origin.stream,
        status=status,
        reason=reason,
        attempts=attempts,
        input_tokens=tokens.input_tokens,
        output_tokens=tokens.output_tokens,
        tokens_estimated=tokens.estimated,
        cost_usd=cost_usd,
        latency_ms=max(0.0, (time.time() - origin.received_at) * 1000),
        ttft_ms=ttft_ms,
        error_class=error_class,
        error_message=error_message,
        api_key_id=origin.api_key_id,
    )


def routed_row(origin: Origin, routed: Routed, *, path: Path) -> RequestLog:
    decision = routed.decision
    return row(
        origin,
        path=path,
        status=200,
        model=decision.model_id,
        provider=decision.provider_id,
        reason=decision.reason,
        attempts=decision.attempts,
        tokens=routed.tokens,
        cost_usd=routed.cost_usd,
    )


def error_row(origin: Origin, error: EngineError, *, path: Path, status: int) -> RequestLog:
    """The row of a request that failed; what was spent on it before it failed is counted too."""
    model, provider, attempts, tokens, cost = origin.requested_model, "", 0, TokenCount(0, 0), 0.0
    cause = error.cause if isinstance(error, PhaseFailed) else error
    if isinstance(error, PhaseFailed):
        attempts, tokens, cost = (
            error.calls,
            TokenCount(error.input_tokens, error.output_tokens),
            error.cost_usd,
        )
    if isinstance(cause, RoutingFailed):
        model, provider, attempts = (
            cause.last.model_id,
            cause.last.provider_id,
            attempts + len(cause.attempts),
        )
    elif isinstance(cause, OutputInvalid):
        model, provider, attempts = cause.model_id, cause.provider_id, max(attempts, 1)
        tokens, cost = TokenCount(cause.input_tokens, cause.output_tokens), cause.cost_usd
    return row(
        origin,
        path=path,
        status=status,
        model=model,
        provider=provider,
        reason="failed",
        attempts=attempts,
        tokens=tokens,
        cost_usd=cost,
        error_class=error_kind(cause),
        error_message=error.message,
    )


def closed_row(origin: Origin, *, path: Path) -> RequestLog:
    return row(
        origin,
        path=path,
        status=CLIENT_CLOSED,
        model=origin.requested_model,
        provider="",
        reason="client-closed",
        attempts=0,
        tokens=TokenCount(0, 0),
        cost_usd=0.0,
        error_message="client closed the request",
    )


def error_kind(error: EngineError) -> str:
    if isinstance(error, (RoutingFailed, UpstreamError)):
        return error.error_class
    if isinstance(error, ModelNotFound):
        return "model_not_found"
    if isinstance(error, NoEligibleModel):
        return "no_eligible_model"
    if isinstance(error, OutputInvalid):
        return "output_invalid"
    return "invalid_request"
