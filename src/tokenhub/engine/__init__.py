"""The engine: routing, failover, streaming. It knows nothing of HTTP or Temporal."""

from tokenhub.engine.errors import (
    EngineError,
    ErrorClass,
    InvalidRequest,
    ModelNotFound,
    NoEligibleModel,
    OutputInvalid,
    PhaseFailed,
    RoutingFailed,
    UpstreamError,
)
from tokenhub.engine.health import HealthTracker, ProviderHealth
from tokenhub.engine.providers.base import Provider, Target
from tokenhub.engine.recorder import ResultRecorder
from tokenhub.engine.registry import ModelSpec, Registry
from tokenhub.engine.router import Engine, Limits, Routed
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
    "ModelNotFound",
    "ModelSpec",
    "NoEligibleModel",
    "OutputInvalid",
    "PhaseFailed",
    "Policy",
    "Provider",
    "ProviderHealth",
    "Registry",
    "ResultRecorder",
    "Routed",
    "RoutingFailed",
    "Target",
    "TokenCount",
    "UpstreamError",
]
