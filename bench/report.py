"""The report: a plain table on stdout, the issue's targets with ✓/✗ (informational), and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stats import fmt

COLUMNS = (
    "scenario",
    "n/side",
    "direct p50/p99",
    "gateway p50/p99",
    "added p50/p95/p99",
    "req/s direct/gw (ratio)",
    "gw CPU s/1k",
    "lg CPU s/1k",
    "peak RSS MB",
    "ovh p50",
    "errors d/g",
)


@dataclass(frozen=True)
class Target:
    scenario: str
    label: str
    path: tuple[str, ...]  # where the value sits in the scenario's result
    limit: float
    at_most: bool  # the value must be ≤ limit (else ≥ limit)
    unit: str

    def value(self, result: dict[str, Any]) -> float | None:
        node: Any = result
        for key in self.path:
            node = node.get(key) if isinstance(node, dict) else None
        return float(node) if isinstance(node, int | float) else None

    def check(self, result: dict[str, Any]) -> dict[str, Any]:
        value = self.value(result)
        met = None if value is None else value <= self.limit if self.at_most else value >= self.limit
        return {
            "scenario": self.scenario,
            "target": self.label,
            "limit": f"{'≤' if self.at_most else '≥'} {self.limit:g} {self.unit}",
            "value": value,
            "met": met,
        }


TARGETS = (
    Target("nonstream_c1", "added latency p50", ("added_ms", "p50"), 0.8, True, "ms"),
    Target("nonstream_c1", "added latency p99", ("added_ms", "p99"), 2.5, True, "ms"),
    Target("nonstream_c64", "gateway throughput / direct", ("throughput_ratio",), 0.5, False, "x"),
    Target("nonstream_c64", "peak RSS", ("peak_rss_mb",), 200, True, "MB"),
    Target("stream_c1", "added TTFT p50", ("ttft_added_ms", "p50"), 1.0, True, "ms"),
    Target("stream_c64", "added TTFT p50", ("ttft_added_ms", "p50"), 1.0, True, "ms"),
    Target("streams_500", "peak RSS", ("peak_rss_mb",), 300, True, "MB"),
    Target("temporal_c1", "added latency p50", ("added_ms", "p50"), 30, True, "ms"),
    Target("temporal_c16", "gateway throughput", ("gateway", "throughput_rps"), 40, False, "req/s"),
    Target("temporal_down", "first request extra", ("first_request_extra_ms",), 100, True, "ms"),
    Target("temporal_down", "breaker open: added p50", ("added_ms", "p50"), 1.0, True, "ms"),
    Target("soak", "RSS growth", ("rss_growth_pct",), 5, True, "%"),
)


def check_targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [target.check(results[target.scenario]) for target in TARGETS if target.scenario in results]


def _pair(*values: float | None) -> str:
    return " / ".join(fmt(value) for value in values)


def _rows(result: dict[str, Any]) -> list[list[str]]:
    direct, gateway = result["direct"], result["gateway"]
    dl, gl, added = direct["latency_ms"], gateway["latency_ms"], result["added_ms"]
    throughput = f"{fmt(direct['throughput_rps'], 0)} / {fmt(gateway['throughput_rps'], 0)}"
    rows = [
        [
            result["name"],
            str(gateway["requests"]),
            _pair(dl["p50"], dl["p99"]),
            _pair(gl["p50"], gl["p99"]),
            _pair(added["p50"], added["p95"], added["p99"]),
            f"{throughput} ({fmt(result['throughput_ratio'])})",
            fmt(result["gateway_cpu_s_per_1k"], 3),
            fmt(result["loadgen_cpu_s_per_1k"], 3),
            fmt(result["peak_rss_mb"], 1),
            fmt(result["overhead_ms_p50"], 3),
            f"{direct['errors']}/{gateway['errors']}",
        ]
    ]
    paced = result.get("paced_direct")
    if paced is not None:
        pl = paced["latency_ms"]
        pace = ["  └ direct, gw's pace", str(paced["requests"]), _pair(pl["p50"], pl["p99"]), "", ""]
        rows.append([*pace, f"{fmt(paced['throughput_rps'], 0)}", *[""] * (len(COLUMNS) - 6)])
    for name, rival in result.get("rivals", {}).items():
        rl, ra = rival["server"]["latency_ms"], rival["added_ms"]
        rate = f"{fmt(rival['server']['throughput_rps'], 0)} ({fmt(rival['throughput_ratio'])})"
        cells = [f"  └ {name}", str(rival["server"]["requests"]), "", _pair(rl["p50"], rl["p99"])]
        cells += [_pair(ra["p50"], ra["p95"], ra["p99"]), rate, fmt(rival["cpu_s_per_1k"], 3)]
        rows.append([*cells, *[""] * (len(COLUMNS) - 8), f"0/{rival['server']['errors']}"])
        if rival["ttft_added_ms"] is not None:
            rt, ta = rival["server"]["ttft_ms"], rival["ttft_added_ms"]
            ttft = ["    └ TTFT", "", "", _pair(rt["p50"], rt["p99"]), _pair(ta["p50"], ta["p95"], ta["p99"])]
            rows.append([*ttft, *[""] * (len(COLUMNS) - 5)])
    if result["ttft_added_ms"] is not None:
        dt, gt, ta = (paced or direct)["ttft_ms"], gateway["ttft_ms"], result["ttft_added_ms"]
        ttft = ["  └ TTFT", "", _pair(dt["p50"], dt["p99"]), _pair(gt["p50"], gt["p99"])]
        rows.append([*ttft, _pair(ta["p50"], ta["p95"], ta["p99"]), *[""] * (len(COLUMNS) - 5)])
    return rows


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def render(report: dict[str, Any]) -> str:
    machine, results = report["machine"], report["results"]
    parts = [
        f"TokenHub bench ({machine['mode']}) {machine['date']} — {machine['cpu_count']} CPUs, "
        f"{machine['cpu_model']}, Python {machine['python']}, git {machine['git']}, "
        f"speed check {machine.get('speed_check_ms', '?')} ms, CPU time stolen by the host "
        f"{machine.get('steal_s', '?')} s",
        "Latencies in ms (added = gateway - direct, same percentile, alternating blocks in one run); "
        "CPU in seconds per 1,000 requests.",
        "",
        _table([list(COLUMNS), *(row for result in results.values() for row in _rows(result))]),
    ]
    if any(result.get("rivals") for result in results.values()):
        parts += [
            "",
            "└ rows: the stack's reference points in the gateway's place, in the same rounds "
            "(bench/reference_proxy.py): naive proxy = Starlette passing each request to the upstream "
            "through one aiohttp session; framework floor = Starlette answering by itself.",
        ]
    notes = [f"  {name}: {result['note']}" for name, result in results.items() if result["note"]]
    if notes:
        parts += ["", "Notes:", *notes]
    if report["targets"]:
        marks = {True: "✓", False: "✗", None: "?"}
        target_rows = [
            [t["scenario"], t["target"], t["limit"], fmt(t["value"]), marks[t["met"]]]
            for t in report["targets"]
        ]
        header = ["scenario", "target (informational)", "limit", "measured", "met"]
        parts += ["", _table([header, *target_rows])]
    return "\n".join(parts)


def machine_info(quick: bool, root: Path) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "load_average_at_start": os.getloadavg(),
        "speed_check_ms": speed_check_ms(),
        "steal_at_start_s": steal_seconds(),
        "git": _git_revision(root),
        "argv": sys.argv,
    }


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to others while this machine's CPUs wanted it, all CPUs together, since
    boot (``/proc/stat``); None where there is no such file. Over a run it says how much a noisy host
    slowed it."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else None


def speed_check_ms() -> float:
    """A fixed piece of pure-Python work, timed (best of three). This VM's speed drifts by a factor of two
    between hours, the direct side's figures with it: compare runs' absolute figures against this."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision(root: Path) -> str:
    """The commit measured, "-dirty" when the tree has edits (the gateway changes between runs); the
    bench's own results do not count, so a run after a run still names its commit alone."""
    commit = _git(root, "rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    edits = _git(root, "status", "--porcelain", "--", ".", ":!bench/results")
    return f"{commit}-dirty" if edits else commit


def _git(root: Path, *args: str) -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    try:
        done = subprocess.run(  # noqa: S603 - git from PATH with fixed arguments
            [git, *args], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
