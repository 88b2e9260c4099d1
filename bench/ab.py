"""Two versions of the gateway compared side by side: the CPU a request of a base commit against the work
tree, both loaded at the same time, each by its own load generator through its own fake upstream.

    python -m bench.ab --base REV [--pairs 8] [--requests 5000] [--concurrency 32] [--stream] [--models 1]
                       [--key '{"rpm": 1000000}']

Alternating blocks (what ``bench.run`` does against the upstream) read ±15 % a pair for the same code on a
noisy VM; loaded at the same time, both sides meet the same noise, and a pair reads within ±3-6 %. The two
slots are not quite alike (an A/A run read 1.056), so the comparison runs twice, the base in slot A and
then in slot B, and the verdict is the geometric mean of the two. The base commit is checked out into a
temporary git worktree, removed afterwards; each gateway imports its own ``src`` through PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.procs import cpu_seconds
from bench.scenarios import ADMIN_TOKEN, MODEL, chat_body, create_key
from bench.stack import ROOT, LoadGenClient, Server, Stack

BLOCK_TIMEOUT_S = 600.0
WARM_REQUESTS = 2000


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare the work tree with")
    parser.add_argument("--pairs", type=int, default=8, help="pairs of blocks each way round")
    parser.add_argument("--requests", type=int, default=5000, help="requests a block, each side")
    parser.add_argument("--concurrency", type=int, default=32, help="each side's")
    parser.add_argument("--stream", action="store_true", help="200-token streams instead of JSON answers")
    parser.add_argument(
        "--models",
        type=int,
        default=1,
        help="models in the catalogue, each on its own provider; requests name the first",
    )
    parser.add_argument(
        "--key",
        type=json.loads,
        help="send every request with an API key made with these fields (JSON: budget_usd, rpm, tpm…)",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def _worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary worktree of this repository, removed on the way out."""
    with tempfile.TemporaryDirectory(prefix="tokenhub-ab-") as tmp:
        path = Path(tmp) / "base"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", str(path), rev], check=True, capture_output=True)  # noqa: S603
        try:
            yield path
        finally:
            subprocess.run([*git, "remove", "--force", str(path)], check=False, capture_output=True)  # noqa: S603


class Side:
    """One gateway, its upstream and its load generator."""

    def __init__(self, stack: Stack, name: str, src: Path, models: int, key: dict[str, Any] | None) -> None:
        upstream = stack.upstream(f"upstream-{name}")
        others = [(f"{MODEL}-{i}", f"bench-{i}", upstream) for i in range(1, models)]
        catalog = stack.catalog([(MODEL, "bench", upstream), *others])
        catalog = catalog.rename(catalog.with_name(f"catalog-{name}.yaml"))
        env = {"PYTHONPATH": str(src)} | ({"TOKENHUB_ADMIN_TOKEN": ADMIN_TOKEN} if key is not None else {})
        self.gateway: Server = stack.gateway(f"gateway-{name}", catalog, f"{name}.db", env)
        self.headers: dict[str, str] = {}
        if key is not None:
            secret = create_key(self.gateway, {"name": "bench", **key})
            self.headers = {"authorization": f"Bearer {secret}"}
        self.loadgen: LoadGenClient = stack.loadgen()

    def block(self, command: dict[str, Any], into: dict[str, float], key: str) -> None:
        """Run one block; put the gateway's CPU milliseconds a request under ``into[key]``."""
        before = cpu_seconds(self.gateway.proc.pid)
        self.loadgen.run({**command, "url": self.gateway.chat_url, "headers": self.headers}, BLOCK_TIMEOUT_S)
        into[key] = (cpu_seconds(self.gateway.proc.pid) - before) / command["requests"] * 1000


def _round(sides: dict[str, Side], command: dict[str, Any], pairs: int) -> list[float]:
    """``pairs`` blocks on both sides at once; the B/A ratio of CPU a request for each."""
    ratios = []
    for pair in range(pairs + 1):  # the first pair warms both up and is not counted
        cpu: dict[str, float] = {}
        load = command if pair else {**command, "requests": WARM_REQUESTS}
        threads = [threading.Thread(target=side.block, args=(load, cpu, k)) for k, side in sides.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if pair:
            ratios.append(cpu["B"] / cpu["A"])
            print(f"  pair {pair}: A {cpu['A']:.4f} ms, B {cpu['B']:.4f} ms a request, B/A {ratios[-1]:.3f}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    body = chat_body(MODEL, args.stream)
    command = {
        "body": body,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "stream": args.stream,
    }
    work = ROOT / "src"
    results = []
    with _worktree(args.base) as base_tree, tempfile.TemporaryDirectory(prefix="tokenhub-ab-run-") as tmp:
        base = base_tree / "src"
        for slots in ({"A": base, "B": work}, {"A": work, "B": base}):
            label = "base in A, work tree in B" if slots["A"] == base else "work tree in A, base in B"
            print(f"{label}:")
            with contextlib.ExitStack() as exits:
                stack = Stack(Path(tempfile.mkdtemp(dir=tmp)), exits)
                sides = {name: Side(stack, name, src, args.models, args.key) for name, src in slots.items()}
                ratios = _round(sides, command, args.pairs)
            median = statistics.median(ratios)
            results.append(median if slots["B"] == work else 1 / median)
            spread = f"mean {statistics.mean(ratios):.3f}, sd {statistics.stdev(ratios):.3f}"
            print(f"  median B/A {median:.3f} ({spread})")
    verdict = math.sqrt(results[0] * results[1])
    print(
        f"work tree / {args.base}, CPU a request: {results[0]:.3f} and {results[1]:.3f} the two ways round, "
        f"{verdict:.3f} together ({(verdict - 1) * 100:+.1f} %)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
