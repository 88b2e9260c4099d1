"""The OpenAI-compatible HTTP surface: ``/v1`` routes, health, metrics, and the error table."""

from starlette.exceptions import HTTPException
from starlette.routing import Route

from tokenhub.config import Mode
from tokenhub.engine import Engine, EngineError, HealthTracker
from tokenhub.gateway.chat import ChatCompletionsEndpoint
from tokenhub.gateway.errors import BodyTooLarge, ErrorReply, reply_for, status_of
from tokenhub.gateway.exchange import Dispatcher, Endpoint, StreamHandle
from tokenhub.gateway.middleware import PostRoutes, RequestMiddleware
from tokenhub.gateway.native import NativeChatEndpoint, PlanEndpoint
from tokenhub.gateway.routes import (
    HealthEndpoints,
    ModelsEndpoints,
    engine_error,
    http_exception,
    server_error,
)
from tokenhub.gateway.turns import StreamTurns
from tokenhub.store import Store
from tokenhub.telemetry import Metrics

__all__ = [
    "BodyTooLarge",
    "Dispatcher",
    "ErrorReply",
    "PostRoutes",
    "RequestMiddleware",
    "StreamHandle",
    "exception_handlers",
    "gateway_routes",
    "post_endpoints",
    "reply_for",
    "status_of",
]


def gateway_routes(
    *,
    dispatcher: Dispatcher,
    engine: Engine,
    health: HealthTracker,
    store: Store,
    metrics: Metrics,
    default_mode: Mode,
    max_body_bytes: int,
) -> list[Route]:
    turns = StreamTurns()
    chat = ChatCompletionsEndpoint(
        dispatcher, turns, default_mode=default_mode, max_body_bytes=max_body_bytes
    )
    native = NativeChatEndpoint(
        dispatcher, engine, turns, default_mode=default_mode, max_body_bytes=max_body_bytes
    )
    plan = PlanEndpoint(dispatcher, engine, max_body_bytes=max_body_bytes)
    models = ModelsEndpoints(engine)
    probes = HealthEndpoints(engine, health, store, metrics)
    return [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/chat", native, methods=["POST"]),
        Route("/v1/plan", plan, methods=["POST"]),
        Route("/v1/models", models.list, methods=["GET"]),
        Route("/v1/models/{model_id:path}", models.retrieve, methods=["GET"]),
        Route("/healthz", probes.healthz, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/metrics", probes.metrics, methods=["GET"]),
    ]


def post_endpoints(routes: list[Route]) -> dict[str, Endpoint]:
    """The ``/v1`` endpoints among ``routes``, by path, for ``PostRoutes``."""
    return {r.path: r.endpoint for r in routes if isinstance(r.endpoint, Endpoint)}


exception_handlers = {
    HTTPException: http_exception,
    EngineError: engine_error,
    Exception: server_error,
}
