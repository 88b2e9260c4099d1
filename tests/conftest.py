"""Shared fixtures: real fake upstreams on loopback and real gateways built by ``app.py``."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import ServerThread
from tests.temporal_server import DevServer, free_port
from tokenhub.app import Components, build_app
from tokenhub.config import Settings, load_catalog
from tokenhub.engine.providers.base import Chunk, ContentChunk, UpstreamChunk
from tokenhub.engine.streaming import OutChunk
from tokenhub.gateway.server import GatewayProtocol
from tokenhub.telemetry import configure_logging

configure_logging("warning", "console")


@dataclass
class Gateway:
    url: str
    db_path: Path
    components: Components
    server: ServerThread

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        """Stop the server (its shutdown flushes every queued request log)."""
        self.server.stop()

    def request_logs(self) -> list[dict[str, Any]]:
        """Rows from the real SQLite file, oldest first. Call ``stop()`` first to see every row."""
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM request_logs ORDER BY created_at").fetchall()
        return [dict(row) for row in rows]


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One real Temporal dev server for the session; tests keep apart by task queue."""
    server = DevServer(tmp_path_factory.mktemp("temporal")).start()
    try:
        yield server
    finally:
        server.stop()


def parsed(chunks: Iterable[UpstreamChunk]) -> list[Chunk]:
    """A provider's chunks as dicts: a ``ContentChunk`` parsed."""
    return [chunk.parsed() if isinstance(chunk, ContentChunk) else chunk for chunk in chunks]


def as_sent(chunks: Iterable[OutChunk]) -> list[Chunk]:
    """The normaliser's chunks as the client reads them: those written as JSON already, parsed."""
    return [orjson.loads(chunk) if isinstance(chunk, bytes) else chunk for chunk in chunks]


_SDK_CLIENTS: list[openai.OpenAI] = []


def sdk_client(base_url: str, api_key: str = "unused", **options: Any) -> openai.OpenAI:
    """The openai SDK's client, without retries, closed when the test ends. Left to the collector (the
    client is in a reference cycle), its pooled socket could be finalized before the client closed it, and
    pytest then failed a later test, or the whole run at exit, on the unclosed-socket warning."""
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, **options)
    _SDK_CLIENTS.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while _SDK_CLIENTS:
        _SDK_CLIENTS.pop().close()


def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true, or fail after ``timeout`` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def make_fake_openai() -> Iterator[Any]:
    """``make_fake_openai() -> (fake, base_url)``: fake OpenAI-compatible upstreams on loopback HTTP."""
    servers: list[ServerThread] = []

    def make() -> tuple[FakeOpenAI, str]:
        fake = FakeOpenAI()
        server = ServerThread(fake, lifespan="off").start()
        servers.append(server)
        return fake, server.url

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def fake_anthropic() -> Iterator[tuple[FakeAnthropic, str]]:
    """A fake Anthropic Messages API over loopback HTTP; (fake, base_url)."""
    fake = FakeAnthropic()
    server = ServerThread(fake, lifespan="off").start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture
def fake_openai(make_fake_openai: Any) -> tuple[FakeOpenAI, str]:
    """One fake OpenAI-compatible upstream; (fake, base_url)."""
    result: tuple[FakeOpenAI, str] = make_fake_openai()
    return result


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Any]:
    """``start_gateway(yaml_text, **settings) -> Gateway``: the real app, served on loopback."""
    started: list[Gateway] = []

    def start(catalog_yaml: str, http: Any = GatewayProtocol, **settings: Any) -> Gateway:
        """``http``: the server protocol; `tokenhub serve`'s unless a test says otherwise."""
        index = len(started)
        config = tmp_path / f"catalog-{index}.yaml"
        config.write_text(textwrap.dedent(catalog_yaml))
        db_path = tmp_path / f"gateway-{index}.db"
        options: dict[str, Any] = {
            "db_url": f"sqlite:///{db_path}",
            "log_flush_interval_ms": 20,
            "provider_timeout_secs": 5.0,
            "request_timeout_secs": 20.0,
        }
        options.update(settings)
        if str(options["db_url"]).startswith("sqlite:///"):
            db_path = Path(str(options["db_url"]).removeprefix("sqlite:///"))
        app, components = build_app(Settings(**options), load_catalog(config))
        server = ServerThread(app, http=http, proxy_headers=False).start()  # as `tokenhub serve` runs
        gateway = Gateway(url=server.url, db_path=db_path, components=components, server=server)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def start_on(
    path: str, request: pytest.FixtureRequest, start_gateway: Any, catalog: str, **settings: Any
) -> Gateway:
    """A gateway whose requests go ``path`` ("direct", or "temporal" on the session's dev server, connected
    with its worker running before this returns)."""
    if path == "temporal":
        server: DevServer = request.getfixturevalue("temporal_server")
        settings = {
            "temporal_enabled": True,
            "temporal_host": server.host,
            "temporal_task_queue": f"tq-{uuid.uuid4().hex}",
            **settings,
        }
    gateway: Gateway = start_gateway(catalog, **settings)
    if path == "temporal":
        manager = gateway.components.manager
        wait_until(lambda: manager.connected and manager.worker_running, what="Temporal up")
        request.addfinalizer(lambda: _assert_no_fallback(gateway))
    return gateway


def _assert_no_fallback(gateway: Gateway) -> None:
    """A test run "on the Temporal path" must not have passed by quietly falling back to a direct call."""
    fallbacks = gateway.components.metrics.temporal_fallback_counts()
    assert not any(fallbacks.values()), f"requests fell back from Temporal to direct: {fallbacks}"


@dataclass
class Worker:
    """A ``tokenhub worker`` process, its output in ``log``."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def started(self) -> bool:
        return "tokenhub_worker_started" in self.log.read_text()

    def stop(self) -> int:
        """SIGTERM (a graceful drain), then its exit status, waited for at most 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def start_worker(tmp_path: Path, temporal_server: DevServer) -> Iterator[Any]:
    """``start_worker(catalog_yaml, queue, db_url, **env) -> Worker``: a ``tokenhub worker`` on the session's
    Temporal dev server and task queue ``queue``, stopped by its PID afterwards."""
    started: list[Worker] = []

    def start(catalog_yaml: str, queue: str, db_url: str, **env: str) -> Worker:
        index = len(started)
        config = tmp_path / f"worker-{index}.yaml"
        config.write_text(catalog_yaml)
        environment = {
            **os.environ,
            "TOKENHUB_TEMPORAL_HOST": temporal_server.host,
            "TOKENHUB_TEMPORAL_TASK_QUEUE": queue,
            "TOKENHUB_DB_URL": db_url,
            **env,
        }
        log = tmp_path / f"worker-{index}.log"
        command = [sys.executable, "-m", "tokenhub", "worker", "--config", str(config)]
        with log.open("w") as out:
            worker = Worker(subprocess.Popen(command, env=environment, stdout=out, stderr=out), log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        try:
            worker.stop()
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(5)


@dataclass
class Replica:
    """A ``tokenhub serve`` process: one of several gateways sharing a database."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[Any]:
    """``start_replica(catalog_yaml, db_url, **env) -> Replica``: a gateway process on its own port, ready
    before this returns, stopped by its PID afterwards. Replicas poll the store every 100 ms."""
    started: list[Replica] = []

    def start(catalog_yaml: str, db_url: str, **env: str) -> Replica:
        index = len(started)
        config = tmp_path / f"replica-{index}.yaml"
        config.write_text(textwrap.dedent(catalog_yaml))
        port = free_port()
        log = tmp_path / f"replica-{index}.log"
        environment = {
            **os.environ,
            "TOKENHUB_DB_URL": db_url,
            "TOKENHUB_CATALOG_POLL_MS": "100",
            "TOKENHUB_LOG_FLUSH_INTERVAL_MS": "20",
            **env,
        }
        command = [sys.executable, "-m", "tokenhub", "serve", "--port", str(port), "--config", str(config)]
        with log.open("w") as out:
            process = subprocess.Popen(command, env=environment, stdout=out, stderr=out)
        replica = Replica(f"http://127.0.0.1:{port}", process, log)
        started.append(replica)
        wait_until(lambda: _ready(replica), timeout=30, what=f"replica {index} to start")
        return replica

    yield start
    for replica in started:
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGTERM)
            try:
                replica.process.wait(20)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait(5)


def _ready(replica: Replica) -> bool:
    if replica.process.poll() is not None:
        raise AssertionError(f"the replica exited: {replica.log.read_text()}")
    try:
        return httpx.get(f"{replica.url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
