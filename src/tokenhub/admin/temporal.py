"""``GET``/``PUT /admin/v1/temporal``: the Temporal flag and connection, as operators see them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tokenhub.admin.common import admin_error, admin_json
from tokenhub.store import AuditStore
from tokenhub.telemetry import Metrics
from tokenhub.temporal_integration.breaker import Breaker
from tokenhub.temporal_integration.flag import TemporalFlag
from tokenhub.temporal_integration.manager import TemporalManager


class _FlagChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool


class TemporalEndpoints:
    def __init__(
        self,
        flag: TemporalFlag,
        manager: TemporalManager,
        breaker: Breaker,
        metrics: Metrics,
        audit: AuditStore,
    ) -> None:
        self._flag = flag
        self._manager = manager
        self._breaker = breaker
        self._metrics = metrics
        self._audit = audit

    async def get(self, request: Request) -> Response:
        return self._status()

    async def put(self, request: Request) -> Response:
        try:
            change = _FlagChange.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return admin_error(400, f'{where}: {first["msg"]} (expected {{"enabled": true|false}})')
        await self._flag.set(change.enabled)
        actor = request.scope["state"]["admin_actor"]
        await self._audit.record(actor, "temporal.set", "temporal", {"enabled": change.enabled})
        return self._status()

    def _status(self) -> Response:
        target = self._manager.target
        body = {
            "enabled": self._flag.enabled,
            "connected": self._manager.connected,
            "worker_running": self._manager.worker_running,
            "breaker": self._breaker.state,
            "host": target.host,
            "namespace": target.namespace,
            "task_queue": target.task_queue,
            "fallbacks": self._metrics.temporal_fallback_counts(),
        }
        return admin_json(body)
