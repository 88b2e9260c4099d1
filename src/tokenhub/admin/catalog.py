"""Providers and models at runtime: ``/admin/v1/providers``, ``/admin/v1/models``, discovery and the
routing simulator. Changes are stored, audited, and applied live to every process."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tokenhub.admin.common import AdminError, admin_json, int_param, iso_time, page
from tokenhub.config import Mode, ModelConfig, ProviderConfig
from tokenhub.engine import ChatRequest, Engine, ModelNotFound, Policy
from tokenhub.engine.live_catalog import LiveCatalog
from tokenhub.store import AuditStore, ModelRow, ProviderRow, SecretsUnavailable

DISCOVERY_TIMEOUT_S = 5.0


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ProviderBody(_Body):
    id: str | None = None
    type: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    # Write-only: stored encrypted, never returned, never logged.
    api_key: str | None = Field(default=None, min_length=1, repr=False)
    options: dict[str, Any] | None = None
    enabled: bool | None = None


class ModelBody(_Body):
    id: str | None = None
    provider_id: str | None = None
    upstream_model: str | None = None
    weight: float | None = None
    max_context_tokens: int | None = None
    input_per_1k: float | None = None
    output_per_1k: float | None = None
    enabled: bool | None = None


class SimulateBody(_Body):
    model: str = ""
    messages: list[Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    mode: Mode | None = None
    max_budget_usd: float | None = Field(default=None, gt=0, le=100)
    max_latency_ms: float | None = Field(default=None, gt=0, le=300_000)
    min_weight: float = Field(default=0.0, ge=0, le=10)


class CatalogEndpoints:
    def __init__(
        self, catalog: LiveCatalog, engine: Engine, audit: AuditStore, *, default_mode: Mode
    ) -> None:
        self._catalog = catalog
        self._engine = engine
        self._audit = audit
        self._default_mode = default_mode

    # --- providers ---------------------------------------------------------------------------------

    async def list_providers(self, request: Request) -> Response:
        return _paged(request, [self._provider_json(p) for p in self._catalog.providers])

    async def get_provider(self, request: Request) -> Response:
        return admin_json(self._provider_json(self._provider(request.path_params["provider_id"])))

    async def create_provider(self, request: Request) -> Response:
        body = await _body(request, ProviderBody)
        if body.id is None:
            raise AdminError(400, "id: required")
        if any(p.id == body.id for p in self._catalog.providers):
            raise AdminError(
                409, f"provider {body.id!r} exists: PATCH /admin/v1/providers/{body.id} changes it"
            )
        config = _provider_config(body.model_dump(exclude_unset=True, exclude={"api_key"}))
        await self._put_provider(request, "provider.create", config, body.api_key)
        return admin_json(self._provider_json(self._provider(config.id)), 201)

    async def update_provider(self, request: Request) -> Response:
        current = self._provider(request.path_params["provider_id"])
        body = await _body(request, ProviderBody)
        if body.id not in (None, current.id):
            raise AdminError(400, "id: cannot be changed")
        fields = {**_provider_fields(current), **body.model_dump(exclude_unset=True, exclude={"api_key"})}
        if "api_key" in body.model_fields_set:
            fields.pop("api_key_env", None)  # a literal key replaces an environment variable
        await self._put_provider(request, "provider.update", _provider_config(fields), body.api_key)
        return admin_json(self._provider_json(self._provider(current.id)))

    async def delete_provider(self, request: Request) -> Response:
        provider = self._provider(request.path_params["provider_id"])
        users = [m.id for m in self._catalog.models if m.provider_id == provider.id]
        if users:
            raise AdminError(409, f"provider {provider.id!r} still serves models: {', '.join(users)}")
        await self._catalog.delete_provider(provider.id)
        await self._record(request, "provider.delete", provider.id, {})
        return Response(status_code=204)

    async def discover(self, request: Request) -> Response:
        """The models the upstream itself lists (``GET /v1/models``), each marked if configured here."""
        row = self._provider(request.path_params["provider_id"])
        registered = {m.upstream_model or m.id for m in self._catalog.models if m.provider_id == row.id}
        if row.type == "simulated":
            found = sorted(registered)
        else:
            found = await self._upstream_models(row)
        return admin_json(
            {
                "provider_id": row.id,
                "models": [{"id": model, "registered": model in registered} for model in found],
            }
        )

    # --- models ------------------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        return _paged(request, [_model_json(m) for m in self._catalog.models])

    async def get_model(self, request: Request) -> Response:
        return admin_json(_model_json(self._model(request.path_params["model_id"])))

    async def create_model(self, request: Request) -> Response:
        body = await _body(request, ModelBody)
        if body.id is None:
            raise AdminError(400, "id: required")
        if any(m.id == body.id for m in self._catalog.models):
            raise AdminError(409, f"model {body.id!r} exists: PATCH /admin/v1/models/{body.id} changes it")
        config = self._model_config(body.model_dump(exclude_unset=True))
        await self._catalog.put_model(config)
        await self._record(request, "model.create", config.id, config.model_dump())
        return admin_json(_model_json(self._model(config.id)), 201)

    async def update_model(self, request: Request) -> Response:
        current = self._model(request.path_params["model_id"])
        body = await _body(request, ModelBody)
        if body.id not in (None, current.id):
            raise AdminError(400, "id: cannot be changed")
        config = self._model_config({**_model_fields(current), **body.model_dump(exclude_unset=True)})
        await self._catalog.put_model(config)
        await self._record(request, "model.update", config.id, body.model_dump(exclude_unset=True))
        return admin_json(_model_json(self._model(config.id)))

    async def delete_model(self, request: Request) -> Response:
        model = self._model(request.path_params["model_id"])
        await self._catalog.delete_model(model.id)
        await self._record(request, "model.delete", model.id, {})
        return Response(status_code=204)

    # --- routing -----------------------------------------------------------------------------------

    async def simulate(self, request: Request) -> Response:
        """What the engine would do with a hypothetical request, now: the decision and the scored list."""
        body = await _body(request, SimulateBody)
        messages = body.messages or [{"role": "user", "content": "x"}]
        try:
            chat = ChatRequest.model_validate(
                {
                    "model": body.model,
                    "messages": messages,
                    **({"max_tokens": body.max_tokens} if body.max_tokens else {}),
                }
            )
        except ValidationError as exc:
            raise AdminError(400, f"messages: {exc.errors()[0]['msg']}") from None
        policy = Policy(
            mode=body.mode or self._default_mode,
            max_budget_usd=body.max_budget_usd,
            max_latency_ms=body.max_latency_ms,
            min_weight=body.min_weight,
        )
        try:
            simulation = self._engine.simulate(chat, policy)
        except ModelNotFound as exc:
            raise AdminError(404, exc.message, "not_found_error") from None
        estimate = simulation.estimate
        eligible = [
            {
                "id": m.id,
                "provider_id": m.provider_id,
                "weight": m.weight,
                "score": round(score, 6),
                "estimated_cost_usd": m.cost_usd(estimate.input_tokens, estimate.output_tokens),
                "selected": index == 0,
            }
            for index, (m, score) in enumerate(simulation.ranked)
        ]
        first = simulation.ranked[0][0] if simulation.ranked else None
        decision = (
            None
            if first is None
            else {"model_id": first.id, "provider_id": first.provider_id, "mode": policy.mode}
        )
        return admin_json(
            {
                "decision": decision,
                "estimated_input_tokens": estimate.input_tokens,
                "eligible": eligible,
                "ineligible": dict(simulation.ineligible),
            }
        )

    # --- helpers -----------------------------------------------------------------------------------

    async def _put_provider(
        self, request: Request, action: str, config: ProviderConfig, api_key: str | None
    ) -> None:
        try:
            await self._catalog.put_provider(config, api_key)
        except SecretsUnavailable as exc:
            raise AdminError(400, f"api_key: {exc}") from None
        detail = {**config.model_dump(mode="json"), "api_key": "(set)" if api_key else None}
        await self._record(request, action, config.id, detail)

    async def _record(self, request: Request, action: str, target: str, detail: dict[str, Any]) -> None:
        await self._audit.record(request.scope["state"]["admin_actor"], action, target, detail)

    def _provider(self, provider_id: str) -> ProviderRow:
        found = next((p for p in self._catalog.providers if p.id == provider_id), None)
        if found is None:
            raise AdminError(404, f"no provider {provider_id!r}", "not_found_error")
        return found

    def _model(self, model_id: str) -> ModelRow:
        found = next((m for m in self._catalog.models if m.id == model_id), None)
        if found is None:
            raise AdminError(404, f"no model {model_id!r}", "not_found_error")
        return found

    def _model_config(self, fields: dict[str, Any]) -> ModelConfig:
        try:
            config = ModelConfig.model_validate(fields)
        except ValidationError as exc:
            raise _invalid(exc) from None
        if config.id == "auto":
            raise AdminError(400, 'id: "auto" is reserved for letting the engine choose')
        if not any(p.id == config.provider_id for p in self._catalog.providers):
            raise AdminError(400, f"provider_id: no provider {config.provider_id!r}")
        return config

    def _provider_json(self, row: ProviderRow) -> dict[str, Any]:
        # Usable: requests can reach it now (enabled, and its client was built from a valid config).
        live = row.enabled and row.id in self._engine.registry.providers()
        return {
            "id": row.id,
            "type": row.type,
            "base_url": row.base_url,
            "api_key_env": row.api_key_env,
            "has_api_key": bool(row.api_key_env or row.api_key_encrypted),
            "options": row.options,
            "enabled": row.enabled,
            "usable": live,
            "updated_at": iso_time(row.updated_at),
        }

    async def _upstream_models(self, row: ProviderRow) -> list[str]:
        key = self._catalog.api_key(row)
        headers: dict[str, str] = {}
        if row.type == "anthropic":
            headers["anthropic-version"] = str(row.options.get("anthropic_version", "2023-06-01"))
            if key:
                headers["x-api-key"] = key
        elif key:
            headers["authorization"] = f"Bearer {key}"
        try:
            async with httpx.AsyncClient(timeout=DISCOVERY_TIMEOUT_S) as client:
                response = await client.get(f"{row.base_url}/v1/models", headers=headers)
            response.raise_for_status()
            data = response.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise AdminError(502, f"the upstream did not list its models: {exc}", "upstream_error") from None
        return sorted(str(item.get("id")) for item in data if isinstance(item, dict) and item.get("id"))


async def _body(request: Request, model: type[Any]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> AdminError:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"] if not str(p).endswith("Options")) or "body"
    return AdminError(400, f"{where}: {first['msg'].removeprefix('Value error, ')}")


def _provider_config(fields: dict[str, Any]) -> ProviderConfig:
    try:
        return ProviderConfig.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _provider_fields(row: ProviderRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": row.type,
        "base_url": row.base_url,
        "api_key_env": row.api_key_env,
        "options": row.options,
        "enabled": row.enabled,
    }


def _model_fields(row: ModelRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "provider_id": row.provider_id,
        "upstream_model": row.upstream_model,
        "weight": row.weight,
        "max_context_tokens": row.max_context_tokens,
        "input_per_1k": row.input_per_1k,
        "output_per_1k": row.output_per_1k,
        "enabled": row.enabled,
    }


def _model_json(row: ModelRow) -> dict[str, Any]:
    return {**_model_fields(row), "updated_at": iso_time(row.updated_at)}


def _paged(request: Request, items: list[dict[str, Any]]) -> Response:
    """An offset page: the cursor is the next item's position."""
    limit = int_param(request, "limit", default=50, low=1, high=200)
    start = int_param(request, "cursor", default=0, low=0, high=10**9)
    chunk = items[start : start + limit]
    following = start + limit
    return page(chunk, str(following) if following < len(items) else None)
