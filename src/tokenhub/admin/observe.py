"""What operators watch: provider health, request stats and logs, the audit log, and live events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from tokenhub.admin.common import AdminError, admin_json, choice_param, int_param, iso_time, page
from tokenhub.engine import Engine
from tokenhub.engine.live_catalog import LiveCatalog
from tokenhub.store import AuditStore, SQLStore
from tokenhub.store.stats import request_log_page, request_stats
from tokenhub.telemetry import EventBus

WINDOWS = {"1m": 60, "5m": 300, "1h": 3600, "24h": 86_400}
# A subscriber that cannot take an event within this long is dropped rather than allowed to hold anything up.
SEND_TIMEOUT_S = 10.0


class ObserveEndpoints:
    def __init__(
        self,
        engine: Engine,
        catalog: LiveCatalog,
        store: SQLStore,
        audit: AuditStore,
        events: EventBus,
        *,
        keepalive_s: float,
    ) -> None:
        self._engine = engine
        self._catalog = catalog
        self._store = store
        self._audit = audit
        self._events = events
        self._keepalive = keepalive_s

    async def health(self, request: Request) -> Response:
        providers = []
        for row in self._catalog.providers:
            health = self._engine.health.snapshot(row.id)
            providers.append(
                {
                    "provider_id": row.id,
                    "enabled": row.enabled,
                    "state": health.state,
                    "consecutive_errors": health.consecutive_errors,
                    "ewma_latency_ms": health.ewma_latency_ms,
                    "error_rate": round(health.error_rate, 4),
                    "cooldown_remaining_s": round(health.cooldown_remaining_s, 3),
                    "last_error": health.last_error,
                }
            )
        return admin_json({"providers": providers})

    async def stats(self, request: Request) -> Response:
        window = choice_param(request, "window", list(WINDOWS), default="5m") or "5m"
        return admin_json((await request_stats(self._store, window_s=WINDOWS[window])).to_json())

    async def logs(self, request: Request) -> Response:
        limit = int_param(request, "limit", default=50, low=1, high=200)
        status = request.query_params.get("status")
        since = request.query_params.get("since")
        try:
            rows, cursor = await request_log_page(
                self._store,
                limit=limit,
                cursor=request.query_params.get("cursor"),
                model=request.query_params.get("model") or None,
                status=int(status) if status else None,
                since=datetime.fromisoformat(since) if since else None,
            )
        except ValueError as exc:
            raise AdminError(
                400,
                f"bad parameter: {exc} (status is a number, since an ISO-8601 time, "
                "cursor the next_cursor of a previous page)",
            ) from None
        items = [{**row.as_row(), "created_at": iso_time(row.created_at)} for row in rows]
        return page(items, cursor)

    async def audit(self, request: Request) -> Response:
        limit = int_param(request, "limit", default=50, low=1, high=200)
        cursor = int_param(request, "cursor", default=0, low=0, high=2**62) or None
        entries = await self._audit.page(limit=limit, before_id=cursor)
        items = [
            {
                "id": e.id,
                "at": iso_time(e.at),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in entries
        ]
        return page(items, str(entries[-1].id) if len(entries) == limit else None)

    async def events(self, request: Request) -> Response:
        """The bus as server-sent events (``event: <type>``, ``data: <json>``), keep-alives between."""
        subscription = self._events.subscribe()

        async def stream() -> AsyncIterator[ServerSentEvent]:
            try:
                yield ServerSentEvent(comment="connected")
                async for event in subscription:
                    payload: dict[str, Any] = {"type": event.type, "timestamp": event.timestamp, **event.data}
                    yield ServerSentEvent(data=orjson.dumps(payload).decode(), event=event.type)
            finally:
                subscription.close()

        return EventSourceResponse(
            stream(),
            ping=self._keepalive,
            send_timeout=SEND_TIMEOUT_S,
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
