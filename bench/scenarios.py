"""The scenarios. Each sends the same load to the fake upstream directly and through the gateway, in
alternating blocks (direct, gateway, direct, gateway, ...) so machine noise hits both sides, and reports
differences and ratios measured side by side in the one run."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from bench.procs import RssSampler, cpu_seconds, memory_mb
from bench.stack import BenchError, LoadGenClient, Server, Stack
from bench.stats import Pool, difference, fmt, per_1k, percentile, ratio

MODEL = "bench-model"
GAP_MODEL = "bench-model-gap"  # on the upstream that pauses between chunks, so streams overlap
SETTLE_REQUESTS = 5
SOAK_BLOCK = 2000
SOAK_SAMPLE_S = 10.0
SOAK_SETTLED_S = 60.0  # the soak's RSS baseline: after the first minute, once caches have filled
DURABLE_WAIT_S = 60.0
ADMIN_TOKEN = secrets.token_hex(16)  # the budgeted gateway's admin API, for making its key
NAIVE_PROXY = "naive proxy"
FRAMEWORK_FLOOR = "framework floor"

# (rounds, requests per block) per scenario: quick mode (about a minute in all), then full mode (about
# 4 minutes plus the soak). Full c1 pools 8,000 samples per side, so its p99 rests on 80.
PLANS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "nonstream_c1": ((3, 500), (8, 1000)),
    "nonstream_c16": ((3, 1500), (6, 2000)),
    "nonstream_c64": ((3, 2000), (6, 3000)),
    "budgeted_c64": ((3, 1000), (6, 2000)),
    "stream_c1": ((3, 150), (6, 500)),
    "stream_c64": ((3, 320), (6, 640)),
    "streams_500": ((1, 500), (3, 500)),
    "temporal_c1": ((3, 40), (6, 150)),
    "temporal_c16": ((3, 96), (5, 300)),
    "temporal_down": ((3, 150), (6, 300)),
}


def chat_body(model: str, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    return {**body, "stream": True} if stream else body


@dataclass(frozen=True)
class Load:
    concurrency: int
    requests: int  # per block; with open_streams, the number of streams opened at once
    stream: bool = False
    open_streams: bool = False
    rate: float | None = None  # requests started per second at most
    headers: dict[str, str] | None = None

    def command(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.open_streams:
            return {"open_streams": self.requests, "url": url, "body": body}
        return {
            "url": url,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "stream": self.stream,
            "body": body,
            "rate": self.rate,
            "headers": self.headers or {},
        }

    @property
    def timeout_s(self) -> float:
        return 60 + self.requests * 0.1

    def warmup(self) -> Load:
        """A small block, discarded: connections open, caches fill."""
        concurrency = min(self.concurrency, 64)
        return Load(concurrency, max(20, 2 * concurrency), self.stream)


@dataclass
class Rival:
    """A server in the gateway's place: its blocks, the paced direct blocks after them, its CPU seconds."""

    server: Pool = field(default_factory=Pool)
    paced: Pool = field(default_factory=Pool)
    cpu_s: float = 0.0


@dataclass
class Comparison:
    direct: Pool = field(default_factory=Pool)
    gateway: Pool = field(default_factory=Pool)
    paced: Pool = field(default_factory=Pool)  # direct again, at the pace the gateway block kept
    rivals: dict[str, Rival] = field(default_factory=dict)  # the stack's reference points, same rounds
    cpu_s: dict[str, float] = field(default_factory=dict)  # per watched process, gateway blocks only
    peak_rss_mb: float | None = None  # the gateway's VmRSS, sampled while the blocks ran
    vmhwm_mb: float | None = None  # the gateway's lifetime peak, at the end


@dataclass
class Bench:
    stack: Stack
    loadgen: LoadGenClient
    upstream: Server
    gap_upstream: Server
    gateway: Server
    catalog: Path
    quick: bool
    soak_s: float
    temporal_pair: tuple[Server, Server] | None = None  # the dev server and the gateway using it
    reference_servers: dict[str, Server] | None = None

    def plan(self, name: str) -> tuple[int, int]:
        quick, full = PLANS[name]
        return quick if self.quick else full

    def run(self, load: Load, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.loadgen.run(load.command(url, body), load.timeout_s)

    def temporal(self) -> tuple[Server, Server]:
        """Started on first use, so the dev server and its worker do not share the CPU with the rest."""
        if self.temporal_pair is None:
            dev = self.stack.temporal("temporal", namespace="default")
            env = {
                "TOKENHUB_TEMPORAL_ENABLED": "true",
                "TOKENHUB_TEMPORAL_HOST": f"127.0.0.1:{dev.port}",
                "TOKENHUB_TEMPORAL_NAMESPACE": "default",
            }
            gateway = self.stack.gateway("gateway-temporal", self.catalog, "bench-temporal.db", env)
            self.temporal_pair = (dev, gateway)
            self._wait_durable(gateway)
        return self.temporal_pair

    def _wait_durable(self, gateway: Server) -> None:
        """Until a request comes back through Temporal: the gateway connects its client and worker
        after /healthz already answers."""
        deadline = time.monotonic() + DURABLE_WAIT_S
        while time.monotonic() < deadline:
            if self.run(Load(1, 5), gateway.chat_url, chat_body(MODEL))["dispatch"].get("temporal"):
                return
            time.sleep(0.5)
        raise BenchError(f"no request went through Temporal within {DURABLE_WAIT_S:g}s")

    def references(self, stream: bool) -> dict[str, Server]:
        """The stack's reference points (``bench/reference_proxy.py``), started on first use: the naive
        aiohttp proxy to the upstream, and Starlette answering by itself (not for streams)."""
        if self.reference_servers is None:
            self.reference_servers = {
                NAIVE_PROXY: self.stack.reference("naive-proxy", self.upstream),
                FRAMEWORK_FLOOR: self.stack.reference("framework-floor", None),
            }
        servers = self.reference_servers
        return {NAIVE_PROXY: servers[NAIVE_PROXY]} if stream else servers

    def stop_temporal(self) -> None:
        if self.temporal_pair is not None:
            for server in self.temporal_pair:
                server.proc.stop()
            self.temporal_pair = None


def alternate(
    bench: Bench,
    load: Load,
    body: dict[str, Any],
    direct_url: str,
    gateway: Server,
    rounds: int,
    also: dict[str, int] | None = None,
    paced: bool = False,
    rivals: dict[str, Server] | None = None,
) -> Comparison:
    """``rounds`` x (direct block, gateway block) after one discarded warm-up block per side. The CPU of
    the gateway (and of the ``also`` PIDs) is counted over the gateway blocks only.

    With ``paced``, each gateway block is followed by a direct block started at the gateway block's rate:
    the same load at the same pace. At full speed the direct side can be the load generator's own
    saturation (streams at concurrency 64: it waits on itself for the first token), which a gateway
    that answers more slowly spares it; compared at equal pace, that saturation is out of the difference.

    Each of ``rivals`` gets a block after the gateway's in every round (and, with ``paced``, a direct block at
    its pace), its own CPU counted over it: servers in the gateway's place, measured side by side with it."""
    watched = {"gateway": gateway.proc.pid, **(also or {})}
    rivals = rivals or {}
    for url in (direct_url, gateway.chat_url, *(rival.chat_url for rival in rivals.values())):
        bench.run(load.warmup(), url, body)
    result = Comparison(cpu_s=dict.fromkeys(watched, 0.0), rivals={name: Rival() for name in rivals})
    with RssSampler(gateway.proc.pid) as rss:
        for _ in range(rounds):
            result.direct.add(bench.run(load, direct_url, body))
            before = {name: cpu_seconds(pid) for name, pid in watched.items()}
            block = bench.run(load, gateway.chat_url, body)
            result.gateway.add(block)
            for name, pid in watched.items():
                result.cpu_s[name] += cpu_seconds(pid) - before[name]
            if paced:
                result.paced.add(bench.run(_paced(load, block), direct_url, body))
            for name, server in rivals.items():
                rival, started_cpu = result.rivals[name], cpu_seconds(server.proc.pid)
                rival_block = bench.run(load, server.chat_url, body)
                rival.server.add(rival_block)
                rival.cpu_s += cpu_seconds(server.proc.pid) - started_cpu
                if paced:
                    rival.paced.add(bench.run(_paced(load, rival_block), direct_url, body))
    result.peak_rss_mb = rss.peak_mb
    result.vmhwm_mb = memory_mb(gateway.proc.pid, "VmHWM")
    return result


def _paced(load: Load, block: dict[str, Any]) -> Load:
    return replace(load, rate=load.requests / block["elapsed_s"])


Percentiles = dict[str, float | None]


def _added(gateway: Percentiles | None, direct: Percentiles | None) -> Percentiles | None:
    if gateway is None or direct is None:
        return None
    return {key: difference(gateway[key], direct[key]) for key in gateway}


def _rival(rival: Rival, direct: Pool) -> dict[str, Any]:
    """A rival's figures, as the gateway's: against the direct blocks at its own pace when there are any."""
    server = rival.server.summary()
    base = (rival.paced if rival.paced.requests else direct).summary()
    return {
        "server": server,
        "added_ms": _added(server["latency_ms"], base["latency_ms"]),
        "ttft_added_ms": _added(server["ttft_ms"], base["ttft_ms"]),
        "throughput_ratio": ratio(rival.server.throughput, direct.throughput),
        "cpu_s_per_1k": per_1k(rival.cpu_s, rival.server.requests),
    }


def summarise(name: str, load: Load, rounds: int, comparison: Comparison) -> dict[str, Any]:
    """Differences are taken against the paced direct blocks when there are any, else the direct ones."""
    direct, gateway = comparison.direct.summary(), comparison.gateway.summary()
    paced = comparison.paced.summary() if comparison.paced.requests else None
    base = paced or direct
    gateway_requests = comparison.gateway.requests
    loadgen_cpu = comparison.direct.loadgen_cpu_s + comparison.gateway.loadgen_cpu_s
    return {
        "name": name,
        "concurrency": load.concurrency,
        "stream": load.stream,
        "rounds": rounds,
        "block": load.requests,
        "direct": direct,
        "gateway": gateway,
        "paced_direct": paced,
        "added_ms": _added(gateway["latency_ms"], base["latency_ms"]),
        "ttft_added_ms": _added(gateway["ttft_ms"], base["ttft_ms"]),
        "ttft_added_unpaced_ms": _added(gateway["ttft_ms"], direct["ttft_ms"]) if paced else None,
        "throughput_ratio": ratio(comparison.gateway.throughput, comparison.direct.throughput),
        "gateway_cpu_s_per_1k": per_1k(comparison.cpu_s.get("gateway", 0.0), gateway_requests),
        "cpu_s_per_1k": {who: per_1k(s, gateway_requests) for who, s in comparison.cpu_s.items()},
        "loadgen_cpu_s_per_1k": per_1k(loadgen_cpu, comparison.direct.requests + gateway_requests),
        "peak_rss_mb": comparison.peak_rss_mb,
        "vmhwm_mb": comparison.vmhwm_mb,
        "overhead_ms_p50": percentile(comparison.gateway.overhead_ms, 50),
        "rivals": {name: _rival(rival, comparison.direct) for name, rival in comparison.rivals.items()},
        "note": "",
    }


def chat(
    bench: Bench, name: str, concurrency: int, stream: bool, paced: bool = False, references: bool = False
) -> dict[str, Any]:
    """With ``references``, the stack's reference points take the same load in the same rounds."""
    rounds, block = bench.plan(name)
    load = Load(concurrency, block, stream)
    body, url = chat_body(MODEL, stream), bench.upstream.chat_url
    rivals = bench.references(stream) if references else None
    comparison = alternate(bench, load, body, url, bench.gateway, rounds, paced=paced, rivals=rivals)
    result = summarise(name, load, rounds, comparison)
    if paced:
        unpaced = result["ttft_added_unpaced_ms"] or {}
        result["note"] = (
            "added figures are against direct blocks paced at the gateway's rate; against the direct blocks "
            f"at full speed, TTFT p50 {fmt(unpaced.get('p50'))} ms"
        )
    return result


def budgeted(bench: Bench) -> dict[str, Any]:
    """Non-stream at concurrency 64 through a gateway of its own whose one API key has a budget and a
    requests-per-minute limit, both too large to refuse: every request is authenticated, counted against the
    limit, and reserves and settles its cost in the store."""
    name = "budgeted_c64"
    rounds, block = bench.plan(name)
    env = {"TOKENHUB_ADMIN_TOKEN": ADMIN_TOKEN}
    gateway = bench.stack.gateway("gateway-budgeted", bench.catalog, "bench-budgeted.db", env)
    secret = create_key(gateway, {"name": "bench", "budget_usd": 1_000_000.0, "rpm": 1_000_000})
    load = Load(64, block, headers={"authorization": f"Bearer {secret}"})
    try:
        comparison = alternate(bench, load, chat_body(MODEL), bench.upstream.chat_url, gateway, rounds)
    finally:
        gateway.proc.stop()
    result = summarise(name, load, rounds, comparison)
    result["note"] = "an API key with a budget and an rpm limit on every request (SQLite store)"
    return result


def create_key(gateway: Server, spec: dict[str, Any]) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}/admin/v1/keys",
        data=json.dumps(spec).encode(),
        headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the local gateway
        secret: str = json.loads(response.read())["key"]
    return secret


def streams_500(bench: Bench) -> dict[str, Any]:
    name = "streams_500"
    rounds, streams = bench.plan(name)
    load = Load(streams, streams, stream=True, open_streams=True)
    body = chat_body(GAP_MODEL, stream=True)
    comparison = alternate(bench, load, body, bench.gap_upstream.chat_url, bench.gateway, rounds)
    result = summarise(name, load, rounds, comparison)
    d, g = result["direct"], result["gateway"]
    result["note"] = (
        f"completed {d['completed']}/{d['requests']} direct, {g['completed']}/{g['requests']} through the "
        f"gateway; errors {d['errors']}/{g['errors']}; statuses through the gateway {g['statuses']}"
    )
    return result


def temporal_load(bench: Bench, name: str, concurrency: int) -> dict[str, Any]:
    dev, gateway = bench.temporal()
    rounds, block = bench.plan(name)
    load = Load(concurrency, block)
    comparison = alternate(
        bench, load, chat_body(MODEL), bench.upstream.chat_url, gateway, rounds, {"temporal": dev.proc.pid}
    )
    result = summarise(name, load, rounds, comparison)
    dispatch = result["gateway"]["dispatch"]
    result["not_durable"] = comparison.gateway.requests - dispatch.get("temporal", 0)
    result["note"] = (
        f"not durable (no x-tokenhub-dispatch: temporal): {result['not_durable']}; dispatch {dispatch}; "
        f"Temporal dev server CPU s/1k req {fmt(result['cpu_s_per_1k'].get('temporal'))}"
    )
    return result


def temporal_down(bench: Bench) -> dict[str, Any]:
    """The Temporal gateway once its dev server is SIGKILLed: the first request meets the outage, the
    next few open the breaker, then blocks with the breaker open."""
    name = "temporal_down"
    dev, gateway = bench.temporal()
    rounds, block = bench.plan(name)
    body = chat_body(MODEL)
    dev.proc.kill()
    first = bench.run(Load(1, 1), gateway.chat_url, body)
    settle = bench.run(Load(1, SETTLE_REQUESTS), gateway.chat_url, body)
    load = Load(1, block)
    result = summarise(
        name, load, rounds, alternate(bench, load, body, bench.upstream.chat_url, gateway, rounds)
    )
    bench.stop_temporal()
    first_ms = first["latencies_ms"][0] if first["latencies_ms"] else None
    result |= {
        "first_request_ms": first_ms,
        "first_request_extra_ms": difference(first_ms, result["direct"]["latency_ms"]["p50"]),
        "first_request_dispatch": first["dispatch"],
        "first_request_errors": first["errors"],
        "settle_ms": settle["latencies_ms"],
        "settle_dispatch": settle["dispatch"],
    }
    result["note"] = (
        f"first request after the kill {fmt(first_ms)} ms, {fmt(result['first_request_extra_ms'])} ms over "
        f"direct p50, dispatch {first['dispatch']}, errors {first['errors']}; the next {SETTLE_REQUESTS}: "
        f"{', '.join(fmt(ms) for ms in settle['latencies_ms'])} ms, dispatch {settle['dispatch']}; "
        f"breaker-open blocks: dispatch {result['gateway']['dispatch']}"
    )
    return result


def soak(bench: Bench) -> dict[str, Any]:
    """c16 through a gateway of its own without pause; VmRSS every 10 s. Growth is measured from the first
    minute, not from start-up, so warm caches do not count as a leak. A fresh process: in the one the other
    scenarios used, growth stays hidden below what 500 open streams already took."""
    name = "soak"
    load = Load(16, SOAK_BLOCK)
    gateway = bench.stack.gateway("gateway-soak", bench.catalog, "bench-soak.db")
    body, url, pid = chat_body(MODEL), gateway.chat_url, gateway.proc.pid
    bench.run(load.warmup(), url, body)
    comparison = Comparison(cpu_s={"gateway": 0.0})
    with RssSampler(pid, SOAK_SAMPLE_S) as rss:
        deadline = time.monotonic() + bench.soak_s
        while time.monotonic() < deadline:
            before = cpu_seconds(pid)
            comparison.gateway.add(bench.run(load, url, body))
            comparison.cpu_s["gateway"] += cpu_seconds(pid) - before
    comparison.peak_rss_mb = rss.peak_mb
    comparison.vmhwm_mb = memory_mb(pid, "VmHWM")
    gateway.proc.stop()
    settled_at = min(SOAK_SETTLED_S, bench.soak_s / 2)
    settled = next((mb for at, mb in rss.samples if at >= settled_at), None)
    end = rss.samples[-1][1] if rss.samples else None
    growth = ratio(difference(end, settled), settled)
    result = summarise(name, load, 0, comparison)
    result |= {
        "seconds": bench.soak_s,
        "rss_samples_mb": [(round(at, 1), round(mb, 2)) for at, mb in rss.samples],
        "rss_settled_mb": settled,
        "rss_end_mb": end,
        "rss_growth_pct": None if growth is None else growth * 100,
    }
    g = result["gateway"]
    result["note"] = (
        f"RSS after {settled_at:g} s {fmt(settled)} MB, at the end {fmt(end)} MB, growth "
        f"{fmt(result['rss_growth_pct'])} %; {g['requests']} requests, {g['errors']} errors"
    )
    return result


Scenario = Callable[[Bench], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {
    # With the stack's reference points alongside: what the added latency and the throughput ratio are
    # set against (shared/reference/load-testing.md), measured here rather than quoted.
    "nonstream_c1": partial(chat, name="nonstream_c1", concurrency=1, stream=False, references=True),
    "nonstream_c16": partial(chat, name="nonstream_c16", concurrency=16, stream=False),
    "nonstream_c64": partial(chat, name="nonstream_c64", concurrency=64, stream=False, references=True),
    "budgeted_c64": budgeted,
    "stream_c1": partial(chat, name="stream_c1", concurrency=1, stream=True, references=True),
    # Paced: at full speed, 64 streams of 200 bursting tokens saturate the load generator itself.
    "stream_c64": partial(chat, name="stream_c64", concurrency=64, stream=True, paced=True, references=True),
    "streams_500": streams_500,
    "temporal_c1": partial(temporal_load, name="temporal_c1", concurrency=1),
    "temporal_c16": partial(temporal_load, name="temporal_c16", concurrency=16),
    "temporal_down": temporal_down,
    "soak": soak,
}
FULL_ONLY = ("soak",)
