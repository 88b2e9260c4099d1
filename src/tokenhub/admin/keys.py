"""``/admin/v1/keys``: API keys created (the secret shown once), listed, changed, rotated and revoked."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import Response

from tokenhub.access import KeyRing
from tokenhub.admin.common import AdminError, admin_json, int_param, iso_time, page
from tokenhub.engine import Engine
from tokenhub.store import AuditStore
from tokenhub.store.models import ApiKeyRow
from tokenhub.store.spend import SpendStore, period_of, period_start

Scope = Literal["chat", "plan", "models"]
Period = Literal["day", "week", "month", "total"]
MAX_GRACE_S = 30 * 86_400


class KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, min_length=1, max_length=128)
    scopes: list[Scope] | None = Field(default=None, min_length=1)
    models: list[str] | None = None
    budget_usd: float | None = Field(default=None, gt=0, le=1_000_000)
    budget_period: Period | None = None
    rpm: int | None = Field(default=None, ge=1, le=1_000_000)
    tpm: int | None = Field(default=None, ge=1, le=100_000_000)
    expires_at: datetime | None = None

    @field_validator("expires_at", mode="before")
    @classmethod
    def _parse_time(cls, value: Any) -> Any:
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return value


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    grace_seconds: int = Field(default=3600, ge=0, le=MAX_GRACE_S)


class KeyEndpoints:
    def __init__(self, ring: KeyRing, spend: SpendStore, engine: Engine, audit: AuditStore) -> None:
        self._ring = ring
        self._spend = spend
        self._engine = engine
        self._audit = audit

    async def create(self, request: Request) -> Response:
        fields = await _fields(request, KeyFields)
        if fields.name is None:
            raise AdminError(400, "name: required")
        self._check(fields)
        now = datetime.now(UTC)
        row = ApiKeyRow(
            id=f"key_{secrets.token_hex(8)}",
            name=fields.name,
            prefix="",
            hash="",
            previous_hash=None,
            previous_valid_until=None,
            scopes=list(fields.scopes or ["chat", "plan", "models"]),
            models=fields.models,
            budget_usd=fields.budget_usd,
            budget_period=fields.budget_period or ("month" if fields.budget_usd else None),
            rpm=fields.rpm,
            tpm=fields.tpm,
            expires_at=fields.expires_at,
            created_at=now,
            revoked_at=None,
            last_used_at=None,
        )
        key, secret = await self._ring.create(row)
        await self._record(request, "key.create", key.id, fields.model_dump(mode="json", exclude_unset=True))
        # The secret is in this response and nowhere else, ever.
        return admin_json({**await self._json(key), "key": secret}, 201)

    async def list(self, request: Request) -> Response:
        limit = int_param(request, "limit", default=50, low=1, high=200)
        start = int_param(request, "cursor", default=0, low=0, high=10**9)
        keys = sorted(self._ring.keys(), key=lambda k: k.created_at)
        chunk = [await self._json(k) for k in keys[start : start + limit]]
        following = start + limit
        return page(chunk, str(following) if following < len(keys) else None)

    async def get(self, request: Request) -> Response:
        return admin_json(await self._json(self._key(request)))

    async def update(self, request: Request) -> Response:
        key = self._key(request)
        fields = await _fields(request, KeyFields)
        self._check(fields)
        changes = fields.model_dump(exclude_unset=True)
        if "scopes" in changes and changes["scopes"] is None:
            raise AdminError(400, "scopes: a key needs at least one scope")
        updated = replace(key, **changes)
        await self._ring.update(updated)
        await self._record(request, "key.update", key.id, fields.model_dump(mode="json", exclude_unset=True))
        return admin_json(await self._json(updated))

    async def rotate(self, request: Request) -> Response:
        key = self._key(request)
        body = await _fields(request, RotateBody, allow_empty=True)
        rotated, secret = await self._ring.rotate(key.id, timedelta(seconds=body.grace_seconds))
        await self._record(request, "key.rotate", key.id, {"grace_seconds": body.grace_seconds})
        return admin_json({**await self._json(rotated), "key": secret})

    async def revoke(self, request: Request) -> Response:
        key = self._key(request)
        await self._ring.revoke(key.id)
        await self._record(request, "key.revoke", key.id, {})
        return Response(status_code=204)

    def _key(self, request: Request) -> ApiKeyRow:
        key = self._ring.get(request.path_params["key_id"])
        if key is None:
            raise AdminError(404, f"no key {request.path_params['key_id']!r}", "not_found_error")
        return key

    def _check(self, fields: KeyFields) -> None:
        unknown = [m for m in fields.models or () if self._engine.registry.get_routable(m) is None]
        if unknown:
            raise AdminError(400, f"models: not configured (or not enabled): {', '.join(unknown)}")
        if fields.expires_at is not None and fields.expires_at <= datetime.now(UTC):
            raise AdminError(400, "expires_at: must be in the future")

    async def _json(self, key: ApiKeyRow) -> dict[str, Any]:
        """Everything about a key but its secret and hashes. ``spend_usd`` is what its logged requests cost
        this period; for a budgeted key, ``budget_*`` are the counters the budget is enforced on."""
        spent = await self._spend.logged_spend(key.id, period_start(key.budget_period))
        budget: dict[str, float | None] = dict.fromkeys(("spent_usd", "reserved_usd", "remaining_usd"))
        if key.budget_usd is not None:
            counted, reserved = await self._spend.spent(key.id, period_of(key.budget_period))
            remaining = max(0.0, key.budget_usd - counted - reserved)
            budget = {"spent_usd": counted, "reserved_usd": reserved, "remaining_usd": remaining}
        return {
            "id": key.id,
            "name": key.name,
            "prefix": key.prefix,
            "scopes": key.scopes,
            "models": key.models,
            "budget_usd": key.budget_usd,
            "budget_period": key.budget_period,
            "spend_usd": round(spent, 6),
            **{f"budget_{name}": None if v is None else round(v, 6) for name, v in budget.items()},
            "rpm": key.rpm,
            "tpm": key.tpm,
            "expires_at": iso_time(key.expires_at),
            "created_at": iso_time(key.created_at),
            "revoked_at": iso_time(key.revoked_at),
            "last_used_at": iso_time(self._ring.last_used(key.id)),
            "previous_valid_until": iso_time(key.previous_valid_until),
        }

    async def _record(self, request: Request, action: str, target: str, detail: dict[str, Any]) -> None:
        await self._audit.record(request.scope["state"]["admin_actor"], action, target, detail)


async def _fields(request: Request, model: type[Any], *, allow_empty: bool = False) -> Any:
    body = await request.body()
    try:
        return model() if allow_empty and not body.strip() else model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise AdminError(400, f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
