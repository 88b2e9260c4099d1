"""Pooling loadgen block results and the few statistics the report needs."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 95, 99)


def percentile(values: list[float], pct: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{pct}": percentile(values, pct) for pct in PERCENTILES}


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def per_1k(seconds: float, requests: int) -> float | None:
    return seconds / requests * 1000 if requests else None


@dataclass
class Pool:
    """Several blocks of one side (direct or gateway) pooled together."""

    latencies_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    dispatch: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    requests: int = 0

    def add(self, block: dict[str, Any]) -> None:
        self.latencies_ms += block["latencies_ms"]
        self.ttft_ms += block["ttft_ms"]
        self.overhead_ms += block["overhead_ms"]
        self.errors += block["errors"]
        self.statuses.update(block["statuses"])
        self.dispatch.update(block["dispatch"])
        self.elapsed_s += block["elapsed_s"]
        self.loadgen_cpu_s += block["cpu_s"]
        self.requests += block["errors"] + len(block["latencies_ms"])

    @property
    def throughput(self) -> float | None:
        return self.requests / self.elapsed_s if self.elapsed_s else None

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": len(self.latencies_ms),
            "errors": self.errors,
            "statuses": dict(self.statuses),
            "dispatch": dict(self.dispatch),
            "latency_ms": percentiles(self.latencies_ms),
            "ttft_ms": percentiles(self.ttft_ms) if self.ttft_ms else None,
            "throughput_rps": self.throughput,
            "elapsed_s": self.elapsed_s,
        }
