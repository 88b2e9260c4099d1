"""The composition root: every object TokenHub runs on is built and wired here, and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from starlette.applications import Starlette
from starlette.types import ASGIApp

from tokenhub.access import KeyBudgets, KeyRing, TokenMeter
from tokenhub.admin import (
    AdminError,
    CatalogEndpoints,
    KeyEndpoints,
    ObserveEndpoints,
    TemporalEndpoints,
    WorkflowEndpoints,
    admin_error_handler,
    admin_routes,
)
from tokenhub.config import Catalog, Settings
from tokenhub.engine import Engine, HealthTracker, Limits, Registry, ResultRecorder
from tokenhub.engine.live_catalog import LiveCatalog
from tokenhub.gateway import (
    PostRoutes,
    RequestMiddleware,
    exception_handlers,
    gateway_routes,
    post_endpoints,
    status_of,
)
from tokenhub.gateway.auth import AccessControl
from tokenhub.store import AuditStore, CatalogStore, EventRelayStore, RequestLogWriter, Secrets, SQLStore
from tokenhub.store.keys import KeyStore
from tokenhub.store.ratelimit import RateLimiter, rate_limiter
from tokenhub.store.spend import SpendStore
from tokenhub.telemetry import EventBus, Metrics
from tokenhub.telemetry.relay import EventForwarder, EventImporter
from tokenhub.temporal_integration.activities import Activities
from tokenhub.temporal_integration.breaker import STATE_VALUES, Breaker, BreakerState
from tokenhub.temporal_integration.direct import DirectDispatcher
from tokenhub.temporal_integration.dispatcher import TemporalDispatcher
from tokenhub.temporal_integration.flag import TemporalFlag
from tokenhub.temporal_integration.manager import TemporalManager, TemporalTarget

log = structlog.get_logger("tokenhub")


@dataclass(frozen=True)
class Components:
    """What ``build_components`` made, for the lifespan and for tests that need to look inside."""

    settings: Settings
    store: SQLStore
    writer: RequestLogWriter
    metrics: Metrics
    events: EventBus
    health: HealthTracker
    engine: Engine
    catalog: LiveCatalog
    keys: KeyRing
    spend: SpendStore
    limiter: RateLimiter
    audit: AuditStore
    relay: EventForwarder | EventImporter
    flag: TemporalFlag
    breaker: Breaker
    manager: TemporalManager
    dispatcher: TemporalDispatcher

    async def start(self) -> None:
        await self.store.start()  # brings the schema up to date first
        await self.writer.start()
        await self.catalog.start()  # seeds the store from the config file on first start, then loads
        await self.keys.start()
        await self.relay.start()
        await self.flag.start()  # starts the Temporal connection when the flag is on

    async def aclose(self) -> None:
        await self.manager.aclose()  # drains the worker first: its activities still need the rest
        await self.flag.aclose()
        await self.relay.aclose()
        await self.keys.aclose()
        await self.catalog.aclose()
        await self.writer.aclose()
        await self.store.aclose()


def build_components(settings: Settings, catalog: Catalog, *, run_worker: bool | None = None) -> Components:
    """Build everything; no I/O happens until ``start()``. ``run_worker`` overrides
    ``TOKENHUB_TEMPORAL_WORKER`` (a ``tokenhub worker`` process always runs one)."""
    metrics = Metrics()
    events = EventBus()

    def health_changed(provider_id: str, old: str, new: str) -> None:
        metrics.health_state(provider_id, new)
        events.publish("health_change", {"provider_id": provider_id, "old_state": old, "new_state": new})
        log.warning("provider_health_changed", provider=provider_id, old=old, new=new)

    def breaker_changed(old: BreakerState, new: BreakerState) -> None:
        metrics.breaker_state(STATE_VALUES[new])
        events.publish("breaker_change", {"old_state": old, "new_state": new})
        log.warning("temporal_breaker_changed", old=old, new=new)

    def temporal_status(connected: bool, worker_running: bool) -> None:
        metrics.temporal_status(connected=connected, worker_running=worker_running)

    health = HealthTracker(on_change=health_changed)
    store = SQLStore(settings.async_db_url)
    poll_s = settings.catalog_poll_ms / 1000
    keys = KeyRing(KeyStore(store, settings.secret_key), poll_s=poll_s)
    spend = SpendStore(store)
    limiter = rate_limiter(store)
    engine = Engine(
        Registry((), {}, ()),  # the live catalogue fills it at start
        health,
        metrics,
        events,
        Limits(attempt=settings.provider_timeout_secs, request=settings.request_timeout_secs),
        spend=KeyBudgets(keys, spend),
    )
    live_catalog = LiveCatalog(
        engine,
        CatalogStore(store),
        Secrets(settings.secret_key),
        catalog,
        metrics,
        connect_timeout=min(5.0, settings.provider_timeout_secs),
        poll_s=poll_s,
        retire_after_s=settings.request_timeout_secs,
    )
    writer = RequestLogWriter(store, flush_interval_s=settings.log_flush_interval_ms / 1000)
    recorder = ResultRecorder(writer, metrics, events, meter=TokenMeter(keys, limiter))
    worker = settings.temporal_worker if run_worker is None else run_worker
    # A worker process has no event stream of its own: it forwards its events for the gateways to show.
    source = f"{socket.gethostname()}:{os.getpid()}"
    relays = EventRelayStore(store)
    relay = EventForwarder(events, relays, source) if run_worker else EventImporter(events, relays, source)
    manager = TemporalManager(
        TemporalTarget(settings.temporal_host, settings.temporal_namespace, settings.temporal_task_queue),
        Activities(engine, recorder, status_of) if worker else None,
        on_status=temporal_status,
    )
    breaker = Breaker(
        threshold=settings.temporal_breaker_threshold,
        cooldown_s=settings.temporal_breaker_cooldown_ms / 1000,
        on_change=breaker_changed,
    )
    flag = TemporalFlag(store, settings.temporal_enabled, on_enable=manager.start, poll_s=poll_s)
    dispatcher = TemporalDispatcher(
        DirectDispatcher(engine, recorder, status_of),
        engine,
        manager,
        breaker,
        flag,
        metrics,
        events,
        start_timeout_s=settings.temporal_start_timeout_ms / 1000,
        pickup_timeout_s=settings.temporal_pickup_timeout_ms / 1000,
        status_of=status_of,
    )
    return Components(
        settings=settings,
        store=store,
        writer=writer,
        metrics=metrics,
        events=events,
        health=health,
        engine=engine,
        catalog=live_catalog,
        keys=keys,
        spend=spend,
        limiter=limiter,
        audit=AuditStore(store),
        relay=relay,
        flag=flag,
        breaker=breaker,
        manager=manager,
        dispatcher=dispatcher,
    )


def build_app(settings: Settings, catalog: Catalog) -> tuple[ASGIApp, Components]:
    parts = build_components(settings, catalog)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await parts.start()
        if settings.auth == "none":
            log.warning(
                "auth_disabled", detail="TOKENHUB_AUTH=none: anyone who can reach /v1 can spend through it"
            )
        log.info(
            "tokenhub_started",
            models=[m.id for m in parts.engine.registry.routable()],
            providers=sorted(parts.engine.registry.providers()),
            db=parts.store.url.render_as_string(),
            temporal=parts.flag.enabled,
        )
        try:
            yield
        finally:
            await parts.aclose()
            log.info("tokenhub_stopped")

    routes = gateway_routes(
        dispatcher=parts.dispatcher,
        engine=parts.engine,
        health=parts.health,
        store=parts.store,
        metrics=parts.metrics,
        default_mode=settings.default_mode,
        max_body_bytes=settings.max_body_bytes,
    )
    admin = admin_routes(
        token=settings.admin_token,
        temporal=TemporalEndpoints(parts.flag, parts.manager, parts.breaker, parts.metrics, parts.audit),
        workflows=WorkflowEndpoints(parts.manager, parts.flag, show_content=settings.admin_show_content),
        catalog=CatalogEndpoints(
            parts.catalog, parts.engine, parts.audit, default_mode=settings.default_mode
        ),
        observe=ObserveEndpoints(
            parts.engine,
            parts.catalog,
            parts.store,
            parts.audit,
            parts.events,
            keepalive_s=settings.admin_events_keepalive_ms / 1000,
        ),
        keys=KeyEndpoints(parts.keys, parts.spend, parts.engine, parts.audit),
    )
    app = Starlette(
        routes=[*routes, admin],
        exception_handlers={**exception_handlers, AdminError: admin_error_handler},
        lifespan=lifespan,
    )
    # The hot path's middleware runs ahead of Starlette, whose own error middleware cost every request two
    # more frames and a send wrapper (1.7 % of the profile's samples at concurrency 64, too little for an
    # A/B to show): RequestMiddleware answers what escapes the endpoints, and Starlette's stack still
    # guards the routes it serves.
    access = AccessControl(
        PostRoutes(app, endpoints=post_endpoints(routes)),
        ring=parts.keys,
        limiter=parts.limiter,
        mode=settings.auth or "auto",
        trusted_proxies=settings.forwarded_allow_ips,
    )
    return RequestMiddleware(access, metrics=parts.metrics), parts


async def run_worker(settings: Settings, catalog: Catalog) -> None:
    """A Temporal worker and nothing else, until SIGINT or SIGTERM: gateways and workers scale apart."""
    parts = build_components(settings, catalog, run_worker=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await parts.start()
    await parts.manager.start()
    log.info("tokenhub_worker_started", host=settings.temporal_host, task_queue=settings.temporal_task_queue)
    try:
        await stop.wait()
    finally:
        await parts.aclose()
        log.info("tokenhub_worker_stopped")
