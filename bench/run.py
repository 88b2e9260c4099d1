"""The benchmark runner: starts the fake upstreams, the gateway, the loadgen (and, for the Temporal
scenarios, a dev server and a second gateway), runs the scenarios, prints the table, writes the JSON.

    python -m bench.run [--quick] [--out bench/results/latest.json] [--only a,b] [--soak-seconds S]

Exits 0 whatever the numbers; non-zero only when it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench.procs import StartError
from bench.report import check_targets, machine_info, render, steal_seconds, write_json
from bench.scenarios import FULL_ONLY, GAP_MODEL, MODEL, SCENARIOS, Bench
from bench.stack import ROOT, BenchError, Stack

STREAM_GAP_MS = 5  # streams_500's upstream: 200 tokens 5 ms apart, so the 500 streams are open together
DEFAULT_SOAK_S = 600.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="TokenHub gateway benchmark.")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no soak: under 2 minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--soak-seconds", type=float, default=DEFAULT_SOAK_S)
    args = parser.parse_args(argv)
    names = (
        args.only.split(",") if args.only else [n for n in SCENARIOS if not (args.quick and n in FULL_ONLY)]
    )
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    args.names = names
    return args


def _setup(workdir: Path, exits: contextlib.ExitStack, args: argparse.Namespace) -> Bench:
    stack = Stack(workdir, exits)
    upstream = stack.upstream("upstream")
    gap_upstream = stack.upstream("upstream-gap", "--gap-ms", str(STREAM_GAP_MS))
    catalog = stack.catalog([(MODEL, "up", upstream), (GAP_MODEL, "up-gap", gap_upstream)])
    gateway = stack.gateway("gateway", catalog, "bench.db")
    return Bench(
        stack=stack,
        loadgen=stack.loadgen(),
        upstream=upstream,
        gap_upstream=gap_upstream,
        gateway=gateway,
        catalog=catalog,
        quick=args.quick,
        soak_s=args.soak_seconds,
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like an exception, so the processes started are still stopped by PID.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {"machine": machine_info(args.quick, ROOT), "results": results}
    failure: str | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="tokenhub-bench-") as tmp, contextlib.ExitStack() as exits:
            bench = _setup(Path(tmp), exits, args)
            for name in args.names:
                print(f"[{time.monotonic() - started:6.1f}s] {name}", file=sys.stderr, flush=True)
                results[name] = SCENARIOS[name](bench)
    except (StartError, BenchError) as exc:
        failure = str(exc)
    steal_at_start, steal_at_end = report["machine"].pop("steal_at_start_s"), steal_seconds()
    if steal_at_start is not None and steal_at_end is not None:
        report["machine"]["steal_s"] = round(steal_at_end - steal_at_start, 1)
    report["targets"] = check_targets(results)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["failure"] = failure
    if results:
        print(render(report))
        write_json(args.out, report)
        print(f"\n{report['elapsed_s']} s; JSON written to {args.out}")
    if failure is not None:
        print(f"bench: could not run: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
