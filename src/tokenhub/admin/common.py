"""What every admin endpoint shares: JSON responses, the admin error shape, query-parameter parsing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response


class AdminError(Exception):
    """An admin request that cannot be served; becomes ``{"error": {"message", "type"}}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def admin_json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def admin_error(status: int, message: str, kind: str = "invalid_request_error") -> Response:
    return admin_json({"error": {"message": message, "type": kind}}, status)


def page(items: Sequence[Any], next_cursor: str | None) -> Response:
    """A page of a list: ``{"items", "next_cursor"}`` (``next_cursor`` is null on the last page)."""
    return admin_json({"items": list(items), "next_cursor": next_cursor})


def int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AdminError(400, f"{name} must be an integer between {low} and {high}") from None
    if not low <= value <= high:
        raise AdminError(400, f"{name} must be an integer between {low} and {high}")
    return value


def choice_param(
    request: Request, name: str, choices: Sequence[str], *, default: str | None = None
) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise AdminError(400, f"{name} must be one of: {', '.join(choices)}")
    return raw


async def admin_error_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, AdminError):
        raise exc
    return admin_error(exc.status, exc.message, exc.kind)


def iso_time(moment: datetime | None) -> str | None:
    """A time as ISO-8601 in UTC with a ``Z``. SQLite hands times back without their zone; they are UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
