"""The engine: routing, failover, streaming. It knows nothing of HTTP or Temporal."""

from tokenhub.engine.errors import (
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
from tokenhub.engine.health import HealthTracker, ProviderHealth
from tokenhub.engine.providers.base import Provider, Target
from tokenhub.engine.recorder import ResultRecorder
from tokenhub.engine.registry import ModelSpec, Registry
from tokenhub.engine.router import Engine, Limits, Reservation, Routed, SpendGuard
from tokenhub.engine.streaming import ChatStream
from tokenhub.engine.types import ChatCompletion, ChatRequest, Decision, Policy, TokenCount

__all__ = [
    "ChatCompletion",
    "ChatRequest",
    "ChatStream",
    "Decision",
    "Engine",
    "EngineError",
    "ErrorClass",
    "HealthTracker",
    "InvalidRequest",
    "Limits",
    "ModelNotAllowed",
    "ModelNotFound",
    "ModelSpec",
    "NoEligibleModel",
    "OutputInvalid",
    "PhaseFailed",
    "Policy",
    "Provider",
    "ProviderHealth",
    "QuotaExceeded",
    "Registry",
    "Reservation",
    "ResultRecorder",
    "Routed",
    "RoutingFailed",
    "SpendGuard",
    "Target",
    "TokenCount",
    "UpstreamError",
]
