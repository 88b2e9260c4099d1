"""Prometheus metrics, in a registry of their own (one per app, so tests and replicas never share one)."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000)
# The gateway's own time per request: sub-millisecond on the direct path, tens of ms through Temporal.
OVERHEAD_BUCKETS_MS = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 50, 100, 250, 1000)
HEALTH_VALUES = {"healthy": 0, "degraded": 1, "down": 2}


class Labelled(Generic[M]):
    """A labelled metric's children, kept by label values: ``labels()`` checks and locks on every call,
    which on the request path costs more than the increment itself."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tokenhub_requests_total",
            "Requests that reached the engine, by outcome.",
            ["model", "provider", "mode", "status", "path"],
            registry=r,
        )
        self.latency = Histogram(
            "tokenhub_request_latency_ms",
            "Request latency (ms), engine in to result out.",
            ["model", "stream"],
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.ttft = Histogram(
            "tokenhub_time_to_first_token_ms",
            "Streaming time to first token (ms).",
            ["model"],
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.tokens = Counter(
            "tokenhub_tokens_total", "Tokens accounted, by model and kind.", ["model", "kind"], registry=r
        )
        self.cost = Counter("tokenhub_cost_usd_total", "Spend in USD, by model.", ["model"], registry=r)
        self.upstream_errors = Counter(
            "tokenhub_upstream_errors_total",
            "Failed upstream calls, by class.",
            ["provider", "error_class"],
            registry=r,
        )
        self.failovers = Counter(
            "tokenhub_failovers_total",
            "Moves to another model after a failure.",
            ["from_model", "error_class"],
            registry=r,
        )
        self.overhead = Histogram(
            "tokenhub_overhead_ms",
            "Gateway time per request (ms) until its response starts, waits on upstreams excluded.",
            ["path"],
            buckets=OVERHEAD_BUCKETS_MS,
            registry=r,
        )
        self.dispatch = Counter(
            "tokenhub_dispatch_total", "Requests by the way they were run.", ["path"], registry=r
        )
        self.temporal_up = Gauge(
            "tokenhub_temporal_up", "1 while Temporal answers health checks.", registry=r
        )
        self.temporal_worker = Gauge(
            "tokenhub_temporal_worker_running", "1 while this process runs a worker.", registry=r
        )
        self.temporal_circuit = Gauge(
            "tokenhub_temporal_circuit_state", "Temporal breaker: 0 closed, 1 open, 2 half-open.", registry=r
        )
        self.temporal_fallbacks = Counter(
            "tokenhub_temporal_fallback_total",
            "Requests that should have run on Temporal but ran directly.",
            ["reason"],
            registry=r,
        )
        self.provider_health = Gauge(
            "tokenhub_provider_health_state",
            "Provider health: 0 healthy, 1 degraded, 2 down.",
            ["provider"],
            registry=r,
        )

        self._requests = Labelled(self.requests)
        self._latency = Labelled(self.latency)
        self._ttft = Labelled(self.ttft)
        self._tokens = Labelled(self.tokens)
        self._cost = Labelled(self.cost)
        self._dispatch = Labelled(self.dispatch)
        self._overhead = Labelled(self.overhead)

    def request_done(
        self,
        *,
        model: str,
        provider: str,
        mode: str,
        status: int,
        path: str,
        stream: bool,
        latency_ms: float,
        ttft_ms: float | None,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
    ) -> None:
        self._requests(model, provider, mode, str(status), path).inc()
        self._latency(model, "true" if stream else "false").observe(latency_ms)
        if ttft_ms is not None:
            self._ttft(model).observe(ttft_ms)
        if input_tokens:
            self._tokens(model, "input").inc(input_tokens)
        if output_tokens:
            self._tokens(model, "output").inc(output_tokens)
        if cost_usd:
            self._cost(model).inc(cost_usd)

    def upstream_error(self, provider: str, error_class: str) -> None:
        self.upstream_errors.labels(provider, error_class).inc()

    def failover(self, from_model: str, error_class: str) -> None:
        self.failovers.labels(from_model, error_class).inc()

    def dispatched(self, path: str) -> None:
        self._dispatch(path).inc()

    def overhead_ms(self, path: str, value: float) -> None:
        self._overhead(path).observe(value)

    def temporal_fallback(self, reason: str) -> None:
        self.temporal_fallbacks.labels(reason).inc()

    def temporal_status(self, *, connected: bool, worker_running: bool) -> None:
        self.temporal_up.set(1 if connected else 0)
        self.temporal_worker.set(1 if worker_running else 0)

    def temporal_fallback_counts(self) -> dict[str, int]:
        """Fallbacks so far in this process, by reason."""
        return {
            sample.labels["reason"]: int(sample.value)
            for metric in self.temporal_fallbacks.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }

    def breaker_state(self, value: int) -> None:
        self.temporal_circuit.set(value)

    def health_state(self, provider: str, state: str) -> None:
        self.provider_health.labels(provider).set(HEALTH_VALUES[state])

    def render(self) -> bytes:
        return generate_latest(self.registry)
