"""The engine's typed errors. Each class says what went wrong; the gateway maps classes to HTTP.

EngineError
├── InvalidRequest      the request cannot be served as written (names the offending field)
├── ModelNotFound       the client named a model nobody configured
├── ModelNotAllowed     the client's API key may not use the model it named
├── NoEligibleModel     models exist, but none may take this request now (context, budget, health)
├── UpstreamError       one upstream call failed; ``error_class`` says how
├── RoutingFailed       every candidate was tried and failed; carries the attempts
├── OutputInvalid       an answer came back but fails the requested format or JSON Schema
├── QuotaExceeded       the paying API key's budget has no room for the call
└── PhaseFailed         one phase of an orchestration failed; carries the phase and its cause
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

ErrorClass = Literal["rate_limited", "transient", "context_overflow", "timeout", "fatal"]
IneligibleReason = Literal["disabled", "context_window", "budget", "latency", "min_weight", "unhealthy"]


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(EngineError):
    """The request is malformed or asks for something impossible; ``param`` names the field."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ModelNotFound(EngineError):
    """Raised when ``model`` names no configured (enabled) model."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or is not enabled on this gateway.")
        self.model = model


class ModelNotAllowed(EngineError):
    """Raised when the request names a model its API key's allow-list leaves out."""

    def __init__(self, model: str) -> None:
        super().__init__(f"This API key may not use the model '{model}'.")
        self.model = model


class NoEligibleModel(EngineError):
    """Raised when no model may take the request; ``reasons`` maps model id to why it was skipped.

    ``retry_after`` (seconds) is set when the blocker is temporary (a provider cooling down).
    """

    def __init__(self, reasons: dict[str, IneligibleReason], retry_after: float | None = None) -> None:
        kinds = sorted(set(reasons.values()))
        detail = ", ".join(f"{model}: {why}" for model, why in sorted(reasons.items()))
        super().__init__(f"No model can take this request ({detail or 'none is configured and enabled'}).")
        self.reasons = reasons
        self.kinds = kinds
        self.retry_after = retry_after


class UpstreamError(EngineError):
    """One upstream call failed.

    ``error_class``: ``rate_limited`` (429/529), ``context_overflow`` (prompt too long for the model),
    ``transient`` (5xx, connection errors, broken streams), ``timeout`` (first token or total),
    ``fatal`` (any other 4xx). ``status`` is the upstream's HTTP status when there was one;
    ``retry_after`` is in seconds.
    """

    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        provider_id: str = "",
        model_id: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class: ErrorClass = error_class
        self.provider_id = provider_id
        self.model_id = model_id
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.provider_id}/{self.model_id}: " if self.provider_id else ""
        return f"{where}{self.error_class}: {self.message}"


class RoutingFailed(EngineError):
    """Every candidate failed. ``error_class`` is the last attempt's: what the client should act on is
    how the last candidate failed (a 429 when it asked us to wait, even if others failed otherwise).
    ``retry_after`` is the shortest wait any rate-limited attempt asked for."""

    def __init__(self, attempts: Sequence[UpstreamError]) -> None:
        if not attempts:
            raise ValueError("RoutingFailed needs at least one attempt")
        self.attempts = tuple(attempts)
        last = self.attempts[-1]
        self.error_class: ErrorClass = last.error_class
        waits = [
            a.retry_after
            for a in self.attempts
            if a.error_class == "rate_limited" and a.retry_after is not None
        ]
        self.retry_after = min(waits) if waits else None
        tried = ", ".join(sorted({f"{a.model_id}" for a in self.attempts}))
        super().__init__(f"All upstream attempts failed ({tried}); last error: {last}")

    @property
    def last(self) -> UpstreamError:
        return self.attempts[-1]

    @property
    def client_fault(self) -> bool:
        """Every attempt was refused by an upstream as a bad request (400/422): the request, not the
        providers, is at fault."""
        return all(a.error_class == "fatal" and a.status in (400, 422) for a in self.attempts)


class OutputInvalid(EngineError):
    """The answer does not match the requested output format or JSON Schema. The call was made (and
    paid for): ``model_id``, ``provider_id``, ``input_tokens``, ``output_tokens`` and ``cost_usd`` say so."""

    def __init__(
        self,
        message: str,
        *,
        model_id: str = "",
        provider_id: str = "",
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.model_id = model_id
        self.provider_id = provider_id
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cost_usd = cost_usd


class PhaseFailed(EngineError):
    """A phase of an orchestration failed: ``phase`` names it (``adversarial critique``), ``cause`` is the
    error that ended it and decides the HTTP status. ``calls``, ``input_tokens``, ``output_tokens`` and
    ``cost_usd`` are what the orchestration had spent until then."""

    def __init__(
        self,
        phase: str,
        cause: EngineError,
        *,
        calls: int = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        super().__init__(f"{phase} phase: {cause.message}")
        self.phase = phase
        self.cause = cause
        self.calls = calls
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cost_usd = cost_usd


class QuotaExceeded(EngineError):
    """The API key's budget for the period cannot cover the call's estimated cost."""

    def __init__(self, account: str, budget_usd: float, period: str) -> None:
        super().__init__(f"API key {account} has used its {budget_usd:g} USD budget for {period}.")
        self.account = account
        self.budget_usd = budget_usd
        self.period = period
