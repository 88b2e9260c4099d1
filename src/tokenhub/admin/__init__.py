"""The admin API under ``/admin/v1``, behind ``AdminAuth``."""

from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from tokenhub.admin.auth import AdminAuth
from tokenhub.admin.catalog import CatalogEndpoints
from tokenhub.admin.common import AdminError, admin_error_handler
from tokenhub.admin.keys import KeyEndpoints
from tokenhub.admin.observe import ObserveEndpoints
from tokenhub.admin.temporal import TemporalEndpoints
from tokenhub.admin.workflows import WorkflowEndpoints

__all__ = [
    "AdminAuth",
    "AdminError",
    "CatalogEndpoints",
    "KeyEndpoints",
    "ObserveEndpoints",
    "TemporalEndpoints",
    "WorkflowEndpoints",
    "admin_error_handler",
    "admin_routes",
]


def admin_routes(
    *,
    token: str | None,
    temporal: TemporalEndpoints,
    workflows: WorkflowEndpoints,
    catalog: CatalogEndpoints,
    observe: ObserveEndpoints,
    keys: KeyEndpoints,
) -> Mount:
    routes = [
        Route("/temporal", temporal.get, methods=["GET"]),
        Route("/temporal", temporal.put, methods=["PUT"]),
        Route("/workflows", workflows.list, methods=["GET"]),
        # Before the plain id route, whose :path would swallow "/history".
        Route("/workflows/{workflow_id:path}/history", workflows.history, methods=["GET"]),
        Route("/workflows/{workflow_id:path}", workflows.describe, methods=["GET"]),
        Route("/providers", catalog.list_providers, methods=["GET"]),
        Route("/providers", catalog.create_provider, methods=["POST"]),
        Route("/providers/{provider_id}/models", catalog.discover, methods=["GET"]),
        Route("/providers/{provider_id}", catalog.get_provider, methods=["GET"]),
        Route("/providers/{provider_id}", catalog.update_provider, methods=["PATCH"]),
        Route("/providers/{provider_id}", catalog.delete_provider, methods=["DELETE"]),
        Route("/models", catalog.list_models, methods=["GET"]),
        Route("/models", catalog.create_model, methods=["POST"]),
        Route("/models/{model_id:path}", catalog.get_model, methods=["GET"]),
        Route("/models/{model_id:path}", catalog.update_model, methods=["PATCH"]),
        Route("/models/{model_id:path}", catalog.delete_model, methods=["DELETE"]),
        Route("/routing/simulate", catalog.simulate, methods=["POST"]),
        Route("/health", observe.health, methods=["GET"]),
        Route("/stats", observe.stats, methods=["GET"]),
        Route("/logs", observe.logs, methods=["GET"]),
        Route("/audit", observe.audit, methods=["GET"]),
        Route("/events", observe.events, methods=["GET"]),
        Route("/keys", keys.list, methods=["GET"]),
        Route("/keys", keys.create, methods=["POST"]),
        Route("/keys/{key_id}/rotate", keys.rotate, methods=["POST"]),
        Route("/keys/{key_id}", keys.get, methods=["GET"]),
        Route("/keys/{key_id}", keys.update, methods=["PATCH"]),
        Route("/keys/{key_id}", keys.revoke, methods=["DELETE"]),
    ]
    return Mount("/admin/v1", routes=routes, middleware=[Middleware(AdminAuth, token=token)])
