"""The gateway's HTTP/1.1 server protocol, on httptools: uvicorn's, cut to what an API gateway serves.

uvicorn still runs the process (sockets, lifespan, signals, graceful shutdown) with this as its ``http``
protocol, and the wire behaviour is uvicorn's: keep-alive and its timeout, pipelining, ``Expect:
100-continue``, chunked bodies both ways, HEAD, flow control, 400 for a request that does not parse, 500
for an app that fails before answering. What differs:

- A response's head goes out with the start of its body: one write and one TCP segment for a JSON answer
  where uvicorn makes two. A chunked (streamed) head is held only to the end of the loop's turn, so a
  stream whose first event is not ready yet still gets its head at once.
- The connection's loss is told to listeners (``scope["extensions"]["tokenhub.connection_lost"]``), so a
  request learns that its client left without a task of its own waiting on ``receive()``.
- Less work a request: a response head checked with one regular expression for all its values and a
  cache of checked names instead of two expressions a header, a plain path read without parsing the
  URL, no ``asyncio.Event`` for a body that arrived with the head. No WebSocket upgrades (the gateway has
  no WebSocket routes: an upgrade request is served as plain HTTP, as uvicorn does without a WebSocket
  library).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl, service_unavailable
from uvicorn.protocols.http.httptools_impl import HEADER_RE, STATUS_LINE
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

CONNECTION_LOST = "tokenhub.connection_lost"
# uvicorn's rule for a value (no control character but tab), checked once over a head's values joined by
# tabs: a tab is allowed in a value, so the join adds nothing the rule would refuse.
_BAD_VALUES = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_CHECKED_NAMES: dict[bytes, bytes] = {}  # a name as the app sent it -> checked and lower-case
_MOST_NAMES = 512  # names are a small set; a bound keeps an app that makes them up from growing this
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"

logger = logging.getLogger("uvicorn.error")


class ConnectionLost:
    """A client connection's end, for the requests on it that want to stop when it goes."""

    __slots__ = ("_listeners", "happened")

    def __init__(self) -> None:
        self.happened = False
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the connection is lost (ask ``happened`` first: it may already be)."""
        self._listeners.append(callback)

    def ignore(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def set(self) -> None:
        self.happened = True
        listeners, self._listeners = self._listeners, []
        for callback in listeners:
            callback()


def _nothing() -> None:
    pass


def _header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


def _header_name(name: bytes) -> bytes:
    checked = _CHECKED_NAMES.get(name)
    if checked is None:
        if HEADER_RE.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        checked = name.lower()
        if len(_CHECKED_NAMES) < _MOST_NAMES:
            _CHECKED_NAMES[name] = checked
    return checked


class RequestCycle:
    """One request on a connection and the response to it: the ASGI ``receive`` and ``send``."""

    __slots__ = (
        "_chunked",
        "_chunks",
        "_defaults",
        "_ended",
        "_flow",
        "_head",
        "_is_head",
        "_left",
        "_loop",
        "_size",
        "_started",
        "_transport",
        "_waiters",
        "_waiting_100",
        "disconnected",
        "keep_alive",
        "more_body",
        "on_complete",
        "response_complete",
        "scope",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        transport: asyncio.Transport,
        flow: FlowControl,
        loop: asyncio.AbstractEventLoop,
        defaults: bytes,
        *,
        keep_alive: bool,
        expect_100: bool,
        on_complete: Callable[[], None],
    ) -> None:
        self.scope = scope
        self._transport = transport
        self._flow = flow
        self._loop = loop
        self._defaults = defaults  # the server's default header lines (its date), ready to write
        self.keep_alive = keep_alive
        self._waiting_100 = expect_100
        self.on_complete = on_complete
        self._is_head = scope["method"] == "HEAD"
        self.disconnected = False
        # Request body: what arrived and was not yet received, whether more is to come, and whether the
        # app has received the end (then a receive waits for the response's end or the client's leaving).
        self._chunks: list[bytes] = []
        self._size = 0
        self.more_body = True
        self._ended = False
        self._waiters: list[asyncio.Future[None]] = []
        # Response
        self._started = False
        self.response_complete = False
        self._head: bytes | None = None  # written with the first body write
        self._chunked = False
        self._left = 0  # bytes of a Content-Length body still to come

    def add_body(self, body: bytes) -> int:
        """Keep a piece of the request body for ``receive``; the size now waiting."""
        self._chunks.append(body)
        self._size += len(body)
        self.wake()
        return self._size

    def wake(self) -> None:
        """Something a ``receive`` waits for happened: a body, its end, the response's end, a disconnect."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def run_asgi(self, app: Callable[..., Any]) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self._started:
                await self._send_500()
            else:
                self._transport.close()
        else:
            if result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._transport.close()
            elif not self._started and not self.disconnected:
                logger.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.response_complete and not self.disconnected:
                logger.error("ASGI callable returned without completing response.")
                self._transport.close()
        finally:
            self.on_complete = _nothing

    async def _send_500(self) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"21"),
            (b"connection", b"close"),
        ]
        await self.send({"type": "http.response.start", "status": 500, "headers": headers})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    async def receive(self) -> dict[str, Any]:
        if self._waiting_100 and not self._transport.is_closing():
            self._transport.write(_CONTINUE)
            self._waiting_100 = False
        if not self.disconnected and not self.response_complete:
            self._flow.resume_reading()
            if not self._chunks and (self.more_body or self._ended):
                waiter = self._loop.create_future()
                self._waiters.append(waiter)
                await waiter
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        chunks, self._chunks, self._size = self._chunks, [], 0
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._ended = not self.more_body
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict[str, Any]) -> None:
        if self._flow.write_paused and not self.disconnected:
            await self._flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self._started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._started = True
            self._waiting_100 = False
            self._head = self._build_head(message["status"], message.get("headers", ()))
            if self._chunked:  # a stream's first event may be a while: its head waits one turn at most
                self._loop.call_soon(self._flush_head)
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._send_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")

    def _build_head(self, status: int, headers: Any) -> bytes:
        lines = [STATUS_LINE[status], self._defaults]
        values = []
        chunked: bool | None = None
        close = False
        for raw_name, value in headers:
            name = _header_name(raw_name)
            values.append(value)
            if name == b"content-length" and chunked is None:
                self._left = int(value)
                chunked = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self._left = 0
                chunked = True
            elif name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
                self.keep_alive = False
                close = True
            lines.append(b"%s: %s\r\n" % (name, value))
        if values and _BAD_VALUES.search(b"\t".join(values)):
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive and not close:
            lines.append(b"connection: close\r\n")
        if chunked is None and not self._is_head and status not in (204, 304):
            chunked = True  # neither a length nor an encoding given
            lines.append(b"transfer-encoding: chunked\r\n")
        self._chunked = bool(chunked)
        lines.append(b"\r\n")
        return b"".join(lines)

    def _send_body(self, body: bytes, more_body: bool) -> None:
        if self._is_head:
            data, self._left = b"", 0
        elif self._chunked:
            data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += _LAST_CHUNK
        else:
            if len(body) > self._left:
                raise RuntimeError("Response content longer than Content-Length")
            self._left -= len(body)
            if self._left and not more_body:  # before the write: a one-message answer sends nothing wrong
                raise RuntimeError("Response content shorter than Content-Length")
            data = body
        if self._head is not None:
            data, self._head = self._head + data, None
        if data:
            self._transport.write(data)
        if not more_body:
            self.response_complete = True
            self.wake()
            if not self.keep_alive:
                self._transport.close()
            self.on_complete()

    def _flush_head(self) -> None:
        if self._head is not None and not self._transport.is_closing():
            head, self._head = self._head, None
            self._transport.write(head)


class GatewayProtocol(asyncio.Protocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self._app = config.loaded_app
        self._loop = _loop or asyncio.get_event_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._state = server_state
        self._app_state = app_state
        self._root_path = config.root_path
        self._asgi = {"version": config.asgi_version, "spec_version": "2.3"}
        self._limit = config.limit_concurrency
        self._fresh_context = config.reset_contextvars
        self._keep_alive_s = config.timeout_keep_alive
        self._keep_alive: asyncio.TimerHandle | None = None
        self._lost = ConnectionLost()
        self._pipeline: deque[tuple[RequestCycle, Callable[..., Any]]] = deque()
        self._cycle: RequestCycle | None = None
        self._defaults: list[tuple[bytes, bytes]] | None = None  # the server's list the lines came from
        self._default_lines = b""
        # Per connection, set when it is made
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._flow: FlowControl = None  # type: ignore[assignment]
        self._server: tuple[str, int | None] | None = None
        self._client: tuple[str, int] | None = None
        self._scheme = "http"
        # Per request, while its head is parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_100 = False

    # asyncio's protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._state.connections.add(self)  # type: ignore[arg-type]  # uvicorn's set takes any protocol
        self._transport = transport
        self._flow = FlowControl(transport)
        self._server = get_local_addr(transport)
        self._client = get_remote_addr(transport)
        self._scheme = "https" if is_ssl(transport) else "http"

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        cycle = self._cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.wake()
        if self._flow is not None:
            self._flow.resume_writing()
        if exc is None:
            self._transport.close()
        self._stop_keep_alive()
        self._parser = None  # type: ignore[assignment]
        self._lost.set()

    def eof_received(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self._stop_keep_alive()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            logger.warning("Unsupported upgrade request.")
        except httptools.HttpParserError:
            logger.warning("Invalid HTTP request received.")
            self._send_400("Invalid HTTP request received.")

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # uvicorn's server

    def shutdown(self) -> None:
        """The server is stopping: close an idle connection, finish the response in flight first."""
        if self._cycle is None or self._cycle.response_complete:
            self._transport.close()
        else:
            self._cycle.keep_alive = False

    # httptools' parser

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect_100 = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        http_version = parser.get_http_version()
        url = self._url
        if url[:1] == b"/" and b"?" not in url and b"%" not in url and b"#" not in url:
            raw_path, query = url, b""  # the usual origin-form path: nothing to parse
        else:
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        root = self._root_path
        scope = {
            "type": "http",
            "asgi": self._asgi,
            "http_version": http_version,
            "server": self._server,
            "client": self._client,
            "scheme": self._scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": root,
            "path": root + path,
            "raw_path": root.encode("ascii") + raw_path if root else raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self._app_state.copy(),
            "extensions": {CONNECTION_LOST: self._lost},  # a server extension of our own, by ASGI's rules
        }
        app = self._app
        limit = self._limit
        if limit is not None and (len(self._state.connections) >= limit or len(self._state.tasks) >= limit):
            app = service_unavailable
            logger.warning("Exceeded concurrency limit.")
        defaults = self._state.default_headers
        if defaults is not self._defaults:  # uvicorn makes a new list each second, for its date
            self._defaults = defaults
            self._default_lines = _header_lines(defaults)
        previous = self._cycle
        self._cycle = cycle = RequestCycle(
            scope,
            self._transport,
            self._flow,
            self._loop,
            self._default_lines,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            expect_100=self._expect_100,
            on_complete=self._response_complete,
        )
        if previous is None or previous.response_complete:
            self._start(cycle, app)
        else:  # pipelined: it waits for the responses before it
            self._flow.pause_reading()
            self._pipeline.appendleft((cycle, app))

    def on_body(self, body: bytes) -> None:
        cycle = self._cycle
        if cycle is not None and not cycle.response_complete and cycle.add_body(body) > HIGH_WATER_LIMIT:
            self._flow.pause_reading()

    def on_message_complete(self) -> None:
        cycle = self._cycle
        if cycle is not None and not cycle.response_complete:
            cycle.more_body = False
            cycle.wake()

    # the rest

    def _start(self, cycle: RequestCycle, app: Callable[..., Any]) -> None:
        if self._fresh_context:  # uvicorn's opt-in: no context leaks from the server into requests
            task = self._loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self._loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self._state.tasks.discard)
        self._state.tasks.add(task)

    def _response_complete(self) -> None:
        self._state.total_requests += 1
        if self._transport.is_closing():
            return
        self._stop_keep_alive()
        self._flow.resume_reading()
        if self._pipeline:
            cycle, app = self._pipeline.pop()
            self._start(cycle, app)
        else:
            self._keep_alive = self._loop.call_later(self._keep_alive_s, self._idle_too_long)

    def _stop_keep_alive(self) -> None:
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            self._keep_alive = None

    def _idle_too_long(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()

    def _send_400(self, message: str) -> None:
        body = message.encode("ascii")
        self._transport.write(
            b"".join(
                [
                    STATUS_LINE[400],
                    _header_lines(self._state.default_headers),
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self._transport.close()
