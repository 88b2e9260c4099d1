"""The catalogue the engine routes by, kept in the store and applied live.

The config file seeds the store at first start; after that the store is the truth. Every process (gateways,
``tokenhub worker``s) watches the store's catalogue version and swaps in a new registry when it moves, so a
change made through any replica's admin API reaches every process within ``poll_s``. Providers whose
settings did not change keep their connection pools; replaced ones are closed once in-flight calls had
time to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from tokenhub.config import Catalog, ModelConfig, ProviderConfig
from tokenhub.engine.providers import Provider, build_provider
from tokenhub.engine.registry import ModelSpec, Registry
from tokenhub.engine.router import Engine
from tokenhub.store import CatalogStore, ModelRow, ProviderRow, Secrets, SecretsUnavailable
from tokenhub.telemetry import Metrics

log = structlog.get_logger(__name__)


class LiveCatalog:
    def __init__(
        self,
        engine: Engine,
        store: CatalogStore,
        secrets: Secrets,
        seed: Catalog,
        metrics: Metrics,
        *,
        connect_timeout: float,
        poll_s: float = 1.0,
        retire_after_s: float = 60.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._secrets = secrets
        self._seed = seed
        self._metrics = metrics
        self._connect_timeout = connect_timeout
        self._poll_s = poll_s
        self._retire_after = retire_after_s
        self._environ = os.environ if environ is None else environ
        self._version = -1
        self._live: dict[str, tuple[ProviderRow, Provider]] = {}
        self.providers: list[ProviderRow] = []
        self.models: list[ModelRow] = []
        self._watcher: asyncio.Task[None] | None = None
        # Providers replaced or removed, waiting for their in-flight calls before being closed.
        self._retiring: dict[asyncio.Task[None], Provider] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Seed the store from the config file if it has no catalogue yet, load it, and start watching."""
        now = datetime.now(UTC)
        if await self._store.seed(
            [provider_row(p, now) for p in self._seed.providers],
            [model_row(m, now) for m in self._seed.models],
        ):
            log.info("catalog_seeded", providers=len(self._seed.providers), models=len(self._seed.models))
        await self.reload()
        self._watcher = asyncio.create_task(self._watch(), name="catalog-watch")

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task, provider in list(self._retiring.items()):
            task.cancel()
            await provider.aclose()
        for _, provider in self._live.values():
            await provider.aclose()
        self._live.clear()

    async def reload(self) -> None:
        """Read the catalogue and make it the engine's, unless it is the one already in use."""
        async with self._lock:
            provider_rows, model_rows, version = await self._store.load()
            if version == self._version:
                return
            live: dict[str, tuple[ProviderRow, Provider]] = {}
            for row in provider_rows:
                current = self._live.get(row.id)
                if current is not None and _same(current[0], row):
                    live[row.id] = (row, current[1])
                    continue
                provider = self._build(row)
                if provider is not None:
                    await provider.start()
                    live[row.id] = (row, provider)
                    self._metrics.health_state(row.id, self._engine.health.snapshot(row.id).state)
            kept = {id(provider) for _, provider in live.values()}
            retired = [provider for _, provider in self._live.values() if id(provider) not in kept]
            self._engine.registry = Registry(
                (model_spec(m) for m in model_rows),
                {pid: provider for pid, (_, provider) in live.items()},
                (row.id for row in provider_rows if row.enabled),
            )
            self._live, self.providers, self.models, self._version = live, provider_rows, model_rows, version
            for provider in retired:
                self._retire(provider)
            log.info("catalog_loaded", version=version, providers=len(live), models=len(model_rows))

    async def put_provider(self, config: ProviderConfig, api_key: str | None) -> None:
        """Create or replace a provider. A literal ``api_key`` is stored encrypted (``SecretsUnavailable``
        without a secret key); None keeps the stored one."""
        existing = next((p for p in self.providers if p.id == config.id), None)
        encrypted = self._secrets.encrypt(api_key) if api_key else None
        if encrypted is None and existing is not None and not config.api_key_env:
            encrypted = existing.api_key_encrypted
        row = replace(provider_row(config, datetime.now(UTC)), api_key_encrypted=encrypted)
        await self._store.put_provider(row)
        await self.reload()

    async def put_model(self, config: ModelConfig) -> None:
        await self._store.put_model(model_row(config, datetime.now(UTC)))
        await self.reload()

    async def delete_provider(self, provider_id: str) -> bool:
        deleted = await self._store.delete_provider(provider_id)
        await self.reload()
        return deleted

    async def delete_model(self, model_id: str) -> bool:
        deleted = await self._store.delete_model(model_id)
        await self.reload()
        return deleted

    def provider_config(self, row: ProviderRow) -> ProviderConfig:
        return ProviderConfig.model_validate(
            {
                "id": row.id,
                "type": row.type,
                "base_url": row.base_url,
                "api_key_env": row.api_key_env,
                "options": row.options,
                "enabled": row.enabled,
            }
        )

    def api_key(self, row: ProviderRow) -> str | None:
        """The provider's key: its environment variable's value, or its stored key decrypted."""
        if row.api_key_env:
            return self._environ.get(row.api_key_env) or None
        if row.api_key_encrypted:
            return self._secrets.decrypt(row.api_key_encrypted)
        return None

    def _build(self, row: ProviderRow) -> Provider | None:
        try:
            return build_provider(
                self.provider_config(row), self.api_key(row), connect_timeout=self._connect_timeout
            )
        except (
            ValueError,
            SecretsUnavailable,
        ) as exc:  # ValueError: also pydantic's, and a key with a line break
            # One broken entry must not stop the others from serving: it is left out, loudly.
            log.error("provider_unusable", provider=row.id, error=str(exc))
            return None

    def _retire(self, provider: Provider) -> None:
        async def close_later() -> None:
            await asyncio.sleep(self._retire_after)
            await provider.aclose()

        task = asyncio.create_task(close_later())
        self._retiring[task] = provider
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                if await self._store.version() != self._version:
                    await self.reload()
            except Exception:  # a store outage must not end the watch: it tries again next round
                log.exception("catalog_reload_failed")


def provider_row(config: ProviderConfig, now: datetime) -> ProviderRow:
    return ProviderRow(
        id=config.id,
        type=config.type,
        base_url=config.base_url,
        api_key_env=config.api_key_env,
        api_key_encrypted=None,
        options=config.options.model_dump(),
        enabled=config.enabled,
        updated_at=now,
    )


def model_row(config: ModelConfig, now: datetime) -> ModelRow:
    return ModelRow(
        id=config.id,
        provider_id=config.provider_id,
        upstream_model=config.upstream_model,
        weight=config.weight,
        max_context_tokens=config.max_context_tokens,
        input_per_1k=config.input_per_1k,
        output_per_1k=config.output_per_1k,
        enabled=config.enabled,
        updated_at=now,
    )


def model_spec(row: ModelRow) -> ModelSpec:
    return ModelSpec(
        id=row.id,
        provider_id=row.provider_id,
        upstream_model=row.upstream_model or row.id,
        weight=row.weight,
        max_context_tokens=row.max_context_tokens,
        input_per_1k=row.input_per_1k,
        output_per_1k=row.output_per_1k,
        created=int(row.updated_at.timestamp()),
        enabled=row.enabled,
    )


def _utc(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _same(a: ProviderRow, b: ProviderRow) -> bool:
    return replace(a, updated_at=b.updated_at) == b
