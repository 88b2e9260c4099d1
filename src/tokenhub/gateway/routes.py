"""The gateway's small routes: models, liveness, readiness, metrics; and its framework error handlers."""

from __future__ import annotations

import asyncio

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tokenhub.engine import Engine, HealthTracker, ModelNotFound, ModelSpec
from tokenhub.gateway.errors import ErrorReply, reply_for
from tokenhub.gateway.exchange import api_key_of
from tokenhub.store import Store
from tokenhub.telemetry import Metrics

log = structlog.get_logger(__name__)


def json_response(
    body: object, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    response = Response(orjson.dumps(body), status_code=status, media_type="application/json")
    for name, value in headers or ():
        response.headers.append(name.decode(), value.decode())
    return response


def error_response(reply: ErrorReply) -> Response:
    headers = [h for h in reply.header_list() if h[0] != b"content-type"]
    return json_response(reply.body(), reply.status, headers)


class ModelsEndpoints:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def list(self, request: Request) -> Response:
        allowed = _allowed_models(request)
        models = [m for m in self._engine.registry.routable() if allowed is None or m.id in allowed]
        return json_response({"object": "list", "data": [_model(m) for m in models]})

    async def retrieve(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        spec = self._engine.registry.get_routable(model_id)
        allowed = _allowed_models(request)
        # A model the key may not use does not exist for it (as with OpenAI's per-project models).
        if spec is None or (allowed is not None and model_id not in allowed):
            return error_response(reply_for(ModelNotFound(model_id)))
        return json_response(_model(spec))


def _allowed_models(request: Request) -> list[str] | None:
    key = api_key_of(request.scope)
    return None if key is None else key.models


def _model(spec: ModelSpec) -> dict[str, object]:
    return {"id": spec.id, "object": "model", "created": spec.created, "owned_by": spec.provider_id}


class HealthEndpoints:
    def __init__(self, engine: Engine, health: HealthTracker, store: Store, metrics: Metrics) -> None:
        self._engine = engine
        self._health = health
        self._store = store
        self._metrics = metrics

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready when the store answers and at least one model's provider is not cooling down."""
        store = "ok"
        try:
            async with asyncio.timeout(2.0):
                await self._store.ping()
        except Exception as exc:  # noqa: BLE001 - any driver error means "not ready", reported by name
            store = f"unavailable: {type(exc).__name__}"
        providers = {pid: self._health.snapshot(pid).state for pid in self._engine.registry.providers()}
        available = [
            m.id for m in self._engine.registry.routable() if self._health.is_available(m.provider_id)
        ]
        ready = store == "ok" and bool(available)
        return json_response(
            {
                "status": "ready" if ready else "not_ready",
                "store": store,
                "models_available": len(available),
                "providers": providers,
            },
            200 if ready else 503,
        )

    async def metrics(self, request: Request) -> Response:
        return Response(self._metrics.render(), media_type=self._metrics.content_type)


async def http_exception(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return await server_error(request, exc)
    if exc.status_code == 404:
        reply = ErrorReply(
            404,
            f"Unknown request URL: {request.method} {request.url.path}.",
            "invalid_request_error",
            "unknown_url",
        )
    elif exc.status_code == 405:
        reply = ErrorReply(
            405,
            f"Method {request.method} is not allowed on {request.url.path}.",
            "invalid_request_error",
            "method_not_allowed",
        )
    else:
        reply = ErrorReply(exc.status_code, str(exc.detail), "invalid_request_error")
    return error_response(reply)


async def engine_error(request: Request, exc: Exception) -> Response:
    """Engine errors raised outside the chat endpoint (which answers its own) get the same table."""
    return error_response(reply_for(exc))


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return error_response(reply_for(exc))
