"""HTTP/1.1 to one upstream origin over pooled keep-alive connections: the providers' transport.

An upstream LLM API needs little of HTTP: a POST with a JSON body, an answer delimited by Content-Length,
chunked encoding or the connection's close (server-sent events for streams), keep-alive and TLS. This does
that and no more, on asyncio's protocol API and httptools' parser (the one uvicorn already parses the
gateway's requests with). aiohttp's client cost 0.36 to 0.39 ms of CPU a request on the bench machine; this
costs 0.13 to 0.19 ms, measured side by side against the bench upstream.

Every wait is bounded: connecting by ``connect_timeout``, a free slot in the pool by the caller's
``wait_s``, each read by ``read_timeout``, the whole exchange by an optional deadline.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

KEEPALIVE_S = 30.0  # an idle connection older than this is closed rather than reused
MAX_HEAD_BYTES = 64 * 1024
READ_PAUSE_BYTES = 256 * 1024  # stop reading the socket while this much waits for a slow reader


class HTTPError(Exception):
    """The exchange failed below HTTP's semantics; the subclass says how."""


class ConnectFailed(HTTPError):
    pass


class Disconnected(HTTPError):
    pass


class MalformedResponse(HTTPError):
    pass


class Timeout(HTTPError):
    pass


@dataclass(frozen=True)
class Origin:
    """Where an upstream lives: ``https://api.example.com:8443/base`` → host, port, TLS, path prefix."""

    host: str
    port: int
    tls: bool
    host_header: str
    path_prefix: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        return cls(
            host=parts.hostname,
            port=parts.port or (443 if tls else 80),
            tls=tls,
            host_header=parts.netloc.rpartition("@")[2],
            path_prefix=parts.path.rstrip("/"),
        )


class Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one exchange at a time.

    The socket's callbacks fill the current response's state; the reader awaits ``_waiter``, which any
    change (head, body, end, failure) resolves.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._active = False
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.headers: dict[str, str] = {}
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._decoder: zlib._Decompress | None = None
        self._until_close = False
        self.done = False
        self._keep_alive = False
        self._error: HTTPError | None = None
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._timers: list[asyncio.TimerHandle] = []

    # --- the exchange, as the client drives it ---------------------------------------------------------

    def send(self, payload: bytes, *, read_timeout: float, total_timeout: float | None) -> None:
        """Write the request (in one write: see the 40 ms trap in shared/reference/load-testing.md)."""
        transport = self._transport
        if transport is None or self._closed:
            raise Disconnected("the connection is closed")
        self._reset()
        self._active = True
        self._read_timeout = read_timeout
        self._last_read = now = self._loop.time()
        # A deadline for the whole exchange no later than the first read's makes the read timer moot.
        if total_timeout is None or total_timeout > read_timeout:
            self._timers.append(self._loop.call_at(now + read_timeout, self._check_read))
        if total_timeout is not None:
            self._timers.append(
                self._loop.call_at(now + total_timeout, self._fail, Timeout(f"took over {total_timeout:g} s"))
            )
        transport.write(payload)

    async def head(self) -> None:
        """Wait for the status line and headers."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self, limit: int) -> bytes:
        """The body, whole, or its first ``limit`` bytes or more when it is longer (the caller checks)."""
        parts: list[bytes] = []
        size = 0
        while True:
            if self._body:
                size += self._buffered
                parts.extend(self._take())
                if size >= limit:
                    break
            if self.done:
                break
            if self._error is not None:
                raise self._error
            await self._wait()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each step, everything received since the last one."""
        while True:
            if self._body:
                parts = self._take()
                yield parts[0] if len(parts) == 1 else b"".join(parts)
            elif self.done:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    def finish(self) -> bool:
        """End the exchange; True when the connection can carry another one."""
        for timer in self._timers:
            timer.cancel()
        reusable = self.done and self._keep_alive and self._error is None and not self._closed
        self._active = False
        self._body.clear()
        if reusable:
            self.idle_since = self._loop.time()
        else:
            self.close()
        return reusable

    def reusable(self, now: float) -> bool:
        transport = self._transport
        return (
            not self._closed
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < KEEPALIVE_S
        )

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self) -> list[bytes]:
        parts = list(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return parts

    def _fail(self, error: HTTPError) -> None:
        if self._active and not self.done and self._error is None:
            self._error = error
            self.close()
            self._wake()

    def _check_read(self) -> None:
        """The read timeout: time since the last bytes, not counting time a slow reader kept us paused."""
        if not self._active or self.done:
            return
        now = self._loop.time()
        if self._paused:
            self._last_read = now
        elif now - self._last_read >= self._read_timeout - 0.001:  # the loop's clock counts in ms
            self._fail(Timeout(f"nothing received for {self._read_timeout:g} s"))
            return
        self._timers.append(self._loop.call_at(self._last_read + self._read_timeout, self._check_read))

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._active:  # bytes nobody asked for: this connection cannot be trusted again
            self.close()
            return
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._active and not self.done:
            if self._until_close and exc is None:
                self._complete()
            else:
                self._fail(Disconnected("upstream closed the connection mid-response"))

    # --- httptools callbacks ---------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise MalformedResponse("response headers too large")  # feed_data re-raises it as a parse error
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self._raw_headers = []
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in self._raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate", "x-gzip"):
            self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, by header
        elif encoding != "identity":  # never asked for: the request sends no Accept-Encoding
            self._fail(MalformedResponse(f"unsupported content-encoding {encoding!r}"))
            return
        self.headers = headers
        self.status = status
        self._until_close = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "")
            and status not in (204, 304)
        )
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._error is not None:
            return
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                self._fail(MalformedResponse(f"cannot decompress the response: {exc}"))
                return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > READ_PAUSE_BYTES and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status and self._error is None:  # not the end of an interim 1xx answer, nor of a failure
            self._complete()

    def _complete(self) -> None:
        if self._decoder is not None:
            rest = self._decoder.flush()
            if rest:
                self._body.append(rest)
                self._buffered += len(rest)
        self._keep_alive = not self._until_close and self._parser.should_keep_alive()
        self.done = True
        self._wake()


class Slots:
    """At most ``size`` holders at once, the rest waiting in arrival order: ``asyncio.Semaphore`` without
    its cost on the free path (on Python 3.11 ``locked()`` and ``acquire()`` scan the waiters with a
    generator; seven Python calls a request where this makes one)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_free(self) -> bool:
        """Take a slot if one is free and nobody waits for it."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self, wait_s: float) -> None:
        """Wait at most ``wait_s`` for a slot (``TimeoutError``)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed a slot as this gave up: it goes to the next in line
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the longest waiting
                return
        self._free += 1


class ConnectionPool:
    """Up to ``max_connections`` connections to one origin; the most recently used idle one is reused."""

    def __init__(self, origin: Origin, *, max_connections: int, connect_timeout: float) -> None:
        self.origin = origin
        self._connect_timeout = connect_timeout
        self._ssl = ssl.create_default_context() if origin.tls else None
        self._slots = Slots(max_connections)
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()

    async def acquire(self, wait_s: float) -> Connection:
        """A connection for one exchange; give it back with ``release``."""
        if not self._slots.take_free():
            try:
                await self._slots.wait(wait_s)
            except TimeoutError:
                raise Timeout(f"no free connection to the upstream within {wait_s:g} s") from None
        try:
            connection = self._reuse() or await self._connect()
        except BaseException:
            self._slots.give_back()
            raise
        self._busy.add(connection)
        return connection

    def release(self, connection: Connection) -> None:
        self._busy.discard(connection)
        self._slots.give_back()
        if connection.finish():
            self._idle.append(connection)

    def close(self) -> None:
        for connection in (*self._idle, *self._busy):
            connection.close()
        self._idle.clear()
        self._busy.clear()

    def _reuse(self) -> Connection | None:
        if not self._idle:
            return None
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl else None,
                )
        except TimeoutError:
            raise Timeout(f"could not connect within {self._connect_timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        return connection
