"""The one table from error to HTTP status and OpenAI error body.

Looked up along the exception's MRO, so a subclass inherits its parent's mapping unless listed itself.
Anything not in the table is a 500 ``server_error`` whose message carries no internals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from starlette.types import Send

from tokenhub.engine import (
    EngineError,
    ErrorClass,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    NoEligibleModel,
    OutputInvalid,
    PhaseFailed,
    QuotaExceeded,
    RoutingFailed,
    UpstreamError,
)
from tokenhub.temporal_integration.records import IdempotencyConflict


class BodyTimeout(EngineError):
    """The client did not finish sending its request body in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request body did not arrive within {seconds:g}s.")


class BodyTooLarge(EngineError):
    """The request body is over ``TOKENHUB_MAX_BODY_BYTES``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than this gateway accepts ({limit} bytes).")


@dataclass(frozen=True)
class ErrorReply:
    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def header_list(self) -> list[tuple[bytes, bytes]]:
        headers = {"content-type": "application/json", **self.headers}
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        # Clients (the openai SDK among them) retry 408/409/429/5xx by default; tell them when not to.
        if 400 <= self.status < 500 and self.status not in (408, 409, 429):
            headers.setdefault("x-should-retry", "false")
        return [(k.encode(), v.encode()) for k, v in headers.items()]

    async def send(self, send: Send, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Answer with this reply, as plain ASGI; ``extra`` headers after its own."""
        headers = [*self.header_list(), *extra]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body_bytes()})


def _invalid(exc: InvalidRequest) -> ErrorReply:
    return ErrorReply(400, exc.message, "invalid_request_error", exc.code, exc.param)


def _too_large(exc: BodyTooLarge) -> ErrorReply:
    return ErrorReply(413, exc.message, "invalid_request_error", "request_too_large")


def _body_timeout(exc: BodyTimeout) -> ErrorReply:
    return ErrorReply(408, exc.message, "invalid_request_error", "request_timeout")


def _quota_exceeded(exc: QuotaExceeded) -> ErrorReply:
    # OpenAI's answer to an exhausted quota; retrying cannot help until the budget's period rolls over.
    return ErrorReply(
        429, exc.message, "insufficient_quota", "insufficient_quota", headers={"x-should-retry": "false"}
    )


def _model_not_allowed(exc: ModelNotAllowed) -> ErrorReply:
    return ErrorReply(403, exc.message, "permission_error", "model_not_allowed", "model")


def _output_invalid(exc: OutputInvalid) -> ErrorReply:
    return ErrorReply(422, exc.message, "invalid_output_error", "output_invalid")


def _phase_failed(exc: PhaseFailed) -> ErrorReply:
    # The cause decides the status; the message says which phase it ended.
    return replace(reply_for(exc.cause), message=exc.message)


def _idempotency_conflict(exc: IdempotencyConflict) -> ErrorReply:
    return ErrorReply(409, exc.message, "invalid_request_error", "idempotency_key_reused")


def _not_found(exc: ModelNotFound) -> ErrorReply:
    return ErrorReply(404, exc.message, "invalid_request_error", "model_not_found", "model")


def _no_eligible(exc: NoEligibleModel) -> ErrorReply:
    kinds = set(exc.kinds)
    if kinds & {"unhealthy", "latency"}:
        # Something temporary is in the way: the client may retry, after Retry-After when we know it.
        return ErrorReply(
            503,
            exc.message,
            "server_error",
            "no_healthy_provider",
            retry_after=exc.retry_after if exc.retry_after else None,
        )
    if kinds == {"context_window"}:
        return ErrorReply(
            400,
            "The request is longer than any configured model's context window.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        )
    if kinds == {"budget"}:
        return ErrorReply(
            400,
            "No model can answer within the request's budget.",
            "invalid_request_error",
            "budget_exceeded",
        )
    # No model can ever take this request as written (or none is configured): retrying cannot help.
    return ErrorReply(400, exc.message, "invalid_request_error", "no_eligible_model")


def _by_class(error_class: ErrorClass, message: str, retry_after: float | None) -> ErrorReply:
    if error_class == "rate_limited":
        return ErrorReply(
            429,
            message,
            "rate_limit_error",
            "rate_limit_exceeded",
            retry_after=retry_after if retry_after is not None else 1.0,
        )
    if error_class == "timeout":
        return ErrorReply(504, message, "server_error", "upstream_timeout")
    if error_class == "context_overflow":
        return ErrorReply(400, message, "invalid_request_error", "context_length_exceeded", "messages")
    return ErrorReply(502, message, "server_error", "upstream_error")


def _upstream(exc: UpstreamError) -> ErrorReply:
    return _by_class(exc.error_class, str(exc), exc.retry_after)


def _routing_failed(exc: RoutingFailed) -> ErrorReply:
    if exc.client_fault:
        # Every upstream refused the request itself: that is the client's 400, in the upstream's words.
        reply = ErrorReply(
            400,
            f"Upstream rejected the request: {exc.last.message}",
            "invalid_request_error",
            "upstream_rejected_request",
        )
    else:
        reply = _by_class(exc.error_class, exc.message, exc.retry_after)
    tried = {"x-tokenhub-model": exc.last.model_id, "x-tokenhub-provider": exc.last.provider_id}
    return replace(reply, headers={**reply.headers, **tried})


_TABLE: dict[type[BaseException], Callable[[Any], ErrorReply]] = {
    InvalidRequest: _invalid,
    BodyTooLarge: _too_large,
    BodyTimeout: _body_timeout,
    IdempotencyConflict: _idempotency_conflict,
    OutputInvalid: _output_invalid,
    QuotaExceeded: _quota_exceeded,
    ModelNotAllowed: _model_not_allowed,
    PhaseFailed: _phase_failed,
    ModelNotFound: _not_found,
    NoEligibleModel: _no_eligible,
    UpstreamError: _upstream,
    RoutingFailed: _routing_failed,
}


def reply_for(exc: BaseException) -> ErrorReply:
    """The status and body for ``exc``; unknown exceptions become an opaque 500."""
    for cls in type(exc).__mro__:
        handler = _TABLE.get(cls)
        if handler is not None:
            return handler(exc)
    return ErrorReply(
        500, "The server had an error while processing your request.", "server_error", "internal_error"
    )


def status_of(exc: EngineError) -> int:
    return reply_for(exc).status
