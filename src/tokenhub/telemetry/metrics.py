"""Prometheus metrics, in a registry of their own (one per app, so tests and replicas never share one)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000)
# The gateway's own time per request: sub-millisecond on the direct path, tens of ms through Temporal.
OVERHEAD_BUCKETS_MS = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 50, 100, 250, 1000)
HEALTH_VALUES = {"healthy": 0, "degraded": 1, "down": 2}


class LoopCounter:
    """A labelled counter for the request path, without locks.

    Only the event loop's thread updates it, so the lock prometheus_client takes on every update buys
    nothing here, and with its label lookups it cost 0.019 ms of the gateway's CPU a request (measured at
    concurrency 64, against 0.26 ms in all). Exported through ``collect`` into the same registry.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = list(labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, value in self._values.items():
            family.add_metric(labels, value)
        yield family


class LoopHistogram:
    """A labelled histogram for the request path, without locks (as ``LoopCounter``)."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = list(labels)
        self._bounds = [float(b) for b in buckets]
        # Per label values: a count per bucket (the last one above every bound), then the sum.
        self._series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, series in self._series.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip([*self._bounds, float("inf")], series, strict=False):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            family.add_metric(list(labels), buckets, sum_value=series[-1])
        yield family


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = LoopCounter(
            "tokenhub_requests_total",
            "Requests that reached the engine, by outcome.",
            ["model", "provider", "mode", "status", "path"],
        )
        self._latency = LoopHistogram(
            "tokenhub_request_latency_ms",
            "Request latency (ms), engine in to result out.",
            ["model", "stream"],
            LATENCY_BUCKETS_MS,
        )
        self._ttft = LoopHistogram(
            "tokenhub_time_to_first_token_ms",
            "Streaming time to first token (ms).",
            ["model"],
            LATENCY_BUCKETS_MS,
        )
        self._tokens = LoopCounter(
            "tokenhub_tokens_total", "Tokens accounted, by model and kind.", ["model", "kind"]
        )
        self._cost = LoopCounter("tokenhub_cost_usd_total", "Spend in USD, by model.", ["model"])
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
        self._overhead = LoopHistogram(
            "tokenhub_overhead_ms",
            "Gateway time per request (ms) until its response starts, waits on upstreams excluded.",
            ["path"],
            OVERHEAD_BUCKETS_MS,
        )
        self._dispatch = LoopCounter(
            "tokenhub_dispatch_total", "Requests by the way they were run.", ["path"]
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
        for collector in (
            self._requests,
            self._latency,
            self._ttft,
            self._tokens,
            self._cost,
            self._overhead,
            self._dispatch,
        ):
            r.register(collector)

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
        self._requests.inc((model, provider, mode, str(status), path))
        self._latency.observe((model, "true" if stream else "false"), latency_ms)
        if ttft_ms is not None:
            self._ttft.observe((model,), ttft_ms)
        if input_tokens:
            self._tokens.inc((model, "input"), input_tokens)
        if output_tokens:
            self._tokens.inc((model, "output"), output_tokens)
        if cost_usd:
            self._cost.inc((model,), cost_usd)

    def upstream_error(self, provider: str, error_class: str) -> None:
        self.upstream_errors.labels(provider, error_class).inc()

    def failover(self, from_model: str, error_class: str) -> None:
        self.failovers.labels(from_model, error_class).inc()

    def dispatched(self, path: str) -> None:
        self._dispatch.inc((path,))

    def overhead_ms(self, path: str, value: float) -> None:
        self._overhead.observe((path,), value)

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
