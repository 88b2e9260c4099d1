"""The admin API under ``/admin/v1``, behind ``AdminAuth``."""

from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from tokenhub.admin.auth import AdminAuth
from tokenhub.admin.temporal import TemporalEndpoints

__all__ = ["AdminAuth", "TemporalEndpoints", "admin_routes"]


def admin_routes(*, token: str | None, temporal: TemporalEndpoints) -> Mount:
    routes = [
        Route("/temporal", temporal.get, methods=["GET"]),
        Route("/temporal", temporal.put, methods=["PUT"]),
    ]
    return Mount("/admin/v1", routes=routes, middleware=[Middleware(AdminAuth, token=token)])
