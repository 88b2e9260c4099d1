"""Serve an ASGI app under uvicorn in a background thread, on a loopback port the OS picks.

The pattern of httpx's own test suite: start, wait for ``started`` (bounded), and on exit set
``should_exit`` and join the thread — the server is stopped by its handle, never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0


class ServerThread:
    def __init__(
        self,
        app: ASGIApp,
        *,
        lifespan: Literal["on", "off"] = "on",
        ssl_certfile: Path | None = None,
        ssl_keyfile: Path | None = None,
        http: type[asyncio.Protocol] | Literal["httptools"] = "httptools",
        proxy_headers: bool = True,
        timeout_keep_alive: int = 5,
    ) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            log_level="critical",
            access_log=False,
            loop="uvloop",
            http=http,
            proxy_headers=proxy_headers,
            timeout_keep_alive=timeout_keep_alive,
            timeout_graceful_shutdown=5,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name=f"uvicorn-{self.port}",
        )

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("server thread exited during start-up (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {self.port} did not start in {START_TIMEOUT_S}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(STOP_TIMEOUT_S)
        self._sock.close()


@contextlib.contextmanager
def serve(app: ASGIApp, *, lifespan: Literal["on", "off"] = "on") -> Iterator[ServerThread]:
    server = ServerThread(app, lifespan=lifespan).start()
    try:
        yield server
    finally:
        server.stop()
