"""The composition root: every object TokenHub runs on is built and wired here, and nowhere else."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware

from tokenhub.config import Catalog, Settings
from tokenhub.engine import Engine, HealthTracker, Limits, Provider, Registry, ResultRecorder
from tokenhub.engine.providers import build_provider
from tokenhub.gateway import RequestIdMiddleware, exception_handlers, gateway_routes, status_of
from tokenhub.store import RequestLogWriter, SQLStore
from tokenhub.telemetry import EventBus, Metrics
from tokenhub.temporal_integration import DirectDispatcher

log = structlog.get_logger("tokenhub")


@dataclass(frozen=True)
class Components:
    """What ``build_app`` made, for the lifespan and for tests that need to look inside."""

    settings: Settings
    store: SQLStore
    writer: RequestLogWriter
    metrics: Metrics
    events: EventBus
    health: HealthTracker
    registry: Registry
    engine: Engine
    dispatcher: DirectDispatcher


def build_components(settings: Settings, catalog: Catalog) -> Components:
    """Build everything; no I/O happens until the lifespan starts it."""
    metrics = Metrics()
    events = EventBus()

    def health_changed(provider_id: str, old: str, new: str) -> None:
        metrics.health_state(provider_id, new)
        events.publish("health_change", {"provider_id": provider_id, "old_state": old, "new_state": new})
        log.warning("provider_health_changed", provider=provider_id, old=old, new=new)

    health = HealthTracker(on_change=health_changed)
    connect_timeout = min(5.0, settings.provider_timeout_secs)
    providers: dict[str, Provider] = {
        p.id: build_provider(p, catalog.api_keys.get(p.id), connect_timeout=connect_timeout)
        for p in catalog.providers
    }
    registry = Registry.from_catalog(catalog, providers, created=int(time.time()))
    for provider_id in providers:
        metrics.health_state(provider_id, "healthy")
    engine = Engine(
        registry,
        health,
        metrics,
        events,
        Limits(attempt=settings.provider_timeout_secs, request=settings.request_timeout_secs),
    )
    store = SQLStore(settings.async_db_url)
    writer = RequestLogWriter(store, flush_interval_s=settings.log_flush_interval_ms / 1000)
    recorder = ResultRecorder(writer, metrics, events)
    dispatcher = DirectDispatcher(engine, recorder, status_of)
    return Components(
        settings=settings,
        store=store,
        writer=writer,
        metrics=metrics,
        events=events,
        health=health,
        registry=registry,
        engine=engine,
        dispatcher=dispatcher,
    )


def build_app(settings: Settings, catalog: Catalog) -> Starlette:
    parts = build_components(settings, catalog)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await parts.store.start()
        await parts.writer.start()
        providers = parts.registry.providers().values()
        for provider in providers:
            await provider.start()
        log.info(
            "tokenhub_started",
            models=[m.id for m in parts.registry.routable()],
            providers=sorted(parts.registry.providers()),
            db=parts.store.url.render_as_string(),
        )
        try:
            yield
        finally:
            for provider in providers:
                await provider.aclose()
            await parts.writer.aclose()
            await parts.store.aclose()
            log.info("tokenhub_stopped")

    routes = gateway_routes(
        dispatcher=parts.dispatcher,
        registry=parts.registry,
        health=parts.health,
        store=parts.store,
        metrics=parts.metrics,
        default_mode=settings.default_mode,
        max_body_bytes=settings.max_body_bytes,
    )
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.components = parts
    return app
