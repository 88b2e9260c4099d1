"""The one seam through which providers speak HTTP: a pool of keep-alive connections per provider.

The upstream client is a measured choice for the request hot path. ``shared/reference/load-testing.md``:
1,200 req/s through a minimal aiohttp proxy at concurrency 64, 92 through httpx's native transport; our own
``http1`` pool then halved aiohttp's CPU per request. Everything about transport errors, timeouts and closing
connections lives here, so adapters only see ``UpstreamError``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, NamedTuple

import orjson

from tokenhub import __version__
from tokenhub.engine.errors import ErrorClass, UpstreamError
from tokenhub.engine.providers import http1

# One SSE event bigger than this is treated as a broken upstream, not buffered forever.
MAX_EVENT_BYTES = 16 * 1024 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
# Events passed on together at most: a burst is written to the client in few writes, but its first
# tokens do not wait for the rest of it to be parsed. A batch is the unit of a stream's turn on the loop
# (gateway/turns.py). 16 against 64 once cut a new request's wait behind the batches ahead of it; since
# a long turn is followed by one that lets no stream through, larger batches no longer delay it, and each
# write saved is ~30 us of the kernel's loopback work. Measured at concurrency 64 (bench stream_c64, Intel
# VM, runs alternating): 128 against 16, 1.12-1.22 against 1.44-1.73 ms of CPU a stream, 809-895 against
# 601-713 streams/s, added first token 0.79-0.86 ms (six runs) against 0.71-1.44 (ten); 256 no better.
FIRST_BATCH_EVENTS = 8
MAX_BATCH_EVENTS = 128


class SSEEvent(NamedTuple):
    """One server-sent event. ``data`` stays bytes, as read: JSON parsers take them without a decode.
    (A named tuple: built for every token of a stream, it costs a third of a frozen dataclass.)"""

    event: str
    data: bytes


def event_json(data: bytes) -> Any:
    """An event's data parsed as JSON (``orjson.JSONDecodeError`` if it is not). Bytes that are not UTF-8
    become U+FFFD, as a text decoder would make them, rather than failing the stream."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return orjson.loads(data.decode("utf-8", errors="replace"))


class UpstreamResponse:
    """A response whose status is 2xx; read it whole or as server-sent events."""

    def __init__(self, connection: http1.Connection, provider_id: str) -> None:
        self._connection = connection
        self._provider_id = provider_id

    async def read(self) -> bytes:
        try:
            body = await self._connection.read(MAX_BODY_BYTES + 1)
        except http1.HTTPError as exc:
            raise _mapped(exc, self._provider_id) from None
        if len(body) > MAX_BODY_BYTES:
            raise UpstreamError("transient", "upstream sent an oversized body", provider_id=self._provider_id)
        return body

    async def events(self) -> AsyncIterator[list[SSEEvent]]:
        """Parse the body as server-sent events, in batches: the events each read completed, up to
        ``FIRST_BATCH_EVENTS`` in the first batch and ``MAX_BATCH_EVENTS`` in later ones. Passing a burst
        on in few batches lets the gateway write it to the client in few writes (one socket write per
        event was over half of its CPU on bursty streams). Comments and ``id:``/``retry:`` lines are
        dropped; CRLF line ends are read as LF."""
        buffer = b""  # the event not yet ended by a blank line
        cap = FIRST_BATCH_EVENTS
        try:
            async for piece in self._connection.chunks():
                if b"\r" in piece:
                    if buffer.endswith(b"\r"):
                        buffer, piece = buffer[:-1], b"\r" + piece
                    piece = piece.replace(b"\r\n", b"\n")
                elif buffer.endswith(b"\r") and piece.startswith(b"\n"):
                    buffer = buffer[:-1]
                seen = len(buffer) - 1  # where a blank line could begin that the last read did not end
                buffer += piece
                if buffer.find(b"\n\n", max(0, seen)) >= 0:
                    frames = buffer.split(b"\n\n")
                    buffer = frames.pop()
                else:
                    frames = []
                if len(buffer) > MAX_EVENT_BYTES:
                    raise UpstreamError(
                        "transient", "upstream sent an oversized event", provider_id=self._provider_id
                    )
                batch: list[SSEEvent] = []
                for frame in frames:
                    if frame.startswith(b"data: ") and b"\n" not in frame and not frame.endswith(b"\r"):
                        # the usual event, one data line; tuple.__new__: the named tuple's own __new__ is
                        # a Python function
                        batch.append(tuple.__new__(SSEEvent, ("message", frame[6:])))
                    elif (event := _event(frame)) is not None:
                        batch.append(event)
                    else:
                        continue
                    if len(batch) == cap:  # the first tokens of a burst go out first
                        yield batch
                        batch, cap = [], MAX_BATCH_EVENTS
                if batch:
                    yield batch
        except http1.HTTPError as exc:
            raise _mapped(exc, self._provider_id) from None
        # An event the body ended without a blank line after it: its whole lines.
        if (event := _event(buffer.rpartition(b"\n")[0])) is not None:
            yield [event]


def _event(frame: bytes) -> SSEEvent | None:
    """The event of one frame's lines, if it has data."""
    name = ""
    data: list[bytes] = []
    for raw in frame.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", errors="replace")
    if not data:
        return None
    return SSEEvent(name or "message", data[0] if len(data) == 1 else b"\n".join(data))


class UpstreamClient:
    """One long-lived connection pool to one upstream base URL.

    Build it at start-up (the request head's fixed part is encoded then); ``start()`` opens the pool
    inside the running loop, ``aclose()`` closes its connections.
    """

    def __init__(
        self,
        *,
        provider_id: str,
        base_url: str,
        headers: Mapping[str, str],
        max_connections: int,
        connect_timeout: float,
        secret: str | None = None,
    ) -> None:
        """``secret``, the provider's API key, is cut out of error bodies: an upstream that echoes the key
        it refused would otherwise put it in the client's error, the request log and the process log."""
        self.provider_id = provider_id
        self._secret = secret.encode() if secret and len(secret) >= 4 else None
        self._origin = http1.Origin.parse(base_url.rstrip("/"))
        fixed = {
            "host": self._origin.host_header,
            "user-agent": f"tokenhub/{__version__}",
            "content-type": "application/json",
            # Said outright: without it a server may pick any coding, brotli included.
            "accept-encoding": "identity",
            **headers,
        }
        if any("\r" in f"{k}{v}" or "\n" in f"{k}{v}" for k, v in fixed.items()):
            raise ValueError(f"provider {provider_id}: a header name or value contains a line break")
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._heads: dict[str, bytes] = {}
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._pool: http1.ConnectionPool | None = None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = http1.ConnectionPool(
                self._origin, max_connections=self._max_connections, connect_timeout=self._connect_timeout
            )

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def post(self, path: str, body: bytes, *, read_timeout: float, total_timeout: float | None) -> Exchange:
        """POST ``body``; ``async with`` the exchange for the response once it is 2xx.

        A non-2xx status raises ``UpstreamError`` classified by ``classify_status``; the body of the
        error is read (bounded) for its message. ``read_timeout`` bounds each wait for bytes (and for a
        free connection), ``total_timeout`` the whole exchange. Leaving the block early — an exception,
        a cancellation — closes the connection, so the upstream stops generating at once.
        """
        if self._pool is None:
            raise UpstreamError("transient", "provider client is not started", provider_id=self.provider_id)
        head = self._heads.get(path) or self._head(path)
        payload = b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body)
        return Exchange(self._pool, self.provider_id, self._secret, payload, read_timeout, total_timeout)

    def _head(self, path: str) -> bytes:
        target = f"{self._origin.path_prefix}{path}"
        head = b"POST %s HTTP/1.1\r\n%s" % (target.encode("latin-1"), self._fixed_headers)
        self._heads[path] = head
        return head


class Exchange:
    """One request and its response on a pooled connection, as an async context manager (a class: the
    generator-based kind cost the hot path a few microseconds more)."""

    __slots__ = ("_connection", "_payload", "_pool", "_provider_id", "_read_timeout", "_secret", "_total")

    def __init__(
        self,
        pool: http1.ConnectionPool,
        provider_id: str,
        secret: bytes | None,
        payload: bytes,
        read_timeout: float,
        total_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._provider_id = provider_id
        self._secret = secret
        self._payload = payload
        self._read_timeout = read_timeout
        self._total = total_timeout
        self._connection: http1.Connection | None = None

    async def __aenter__(self) -> UpstreamResponse:
        try:
            connection = self._connection = await self._pool.acquire(self._read_timeout)
        except http1.HTTPError as exc:
            raise _mapped(exc, self._provider_id) from None
        try:
            connection.send(self._payload, read_timeout=self._read_timeout, total_timeout=self._total)
            await connection.head()
            if connection.status >= 300:
                raw = (await connection.read(MAX_ERROR_BODY_BYTES))[:MAX_ERROR_BODY_BYTES]
                if self._secret is not None:
                    raw = raw.replace(self._secret, b"[redacted]")
                raise classify_status(
                    connection.status, raw, connection.headers, provider_id=self._provider_id
                )
        except BaseException as exc:
            self._release()
            if isinstance(exc, http1.HTTPError):
                raise _mapped(exc, self._provider_id) from None
            raise
        return UpstreamResponse(connection, self._provider_id)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._connection is not None:
            self._pool.release(self._connection)
            self._connection = None


def classify_status(
    status: int, body: bytes, headers: Mapping[str, str], *, provider_id: str
) -> UpstreamError:
    """Turn an upstream's error status and body into an ``UpstreamError`` of the right class."""
    text = body.decode("utf-8", errors="replace")
    lowered = text.lower()
    message = _error_message(text) or f"upstream returned HTTP {status}"
    error_class: ErrorClass
    if status in (429, 529):
        error_class = "fatal" if "insufficient_quota" in lowered else "rate_limited"
    elif _looks_like_context_overflow(status, lowered):
        error_class = "context_overflow"
    elif status in (408, 425) or status >= 500:
        error_class = "transient"
    else:
        error_class = "fatal"
    return UpstreamError(
        error_class, message, provider_id=provider_id, status=status, retry_after=parse_retry_after(headers)
    )


def _looks_like_context_overflow(status: int, lowered: str) -> bool:
    if status not in (400, 413, 422):
        return False
    markers = (
        "context_length_exceeded",
        "context length",
        "maximum context",
        "prompt is too long",
        "prompt_too_long",
        "too many tokens",
        "input is too long",
        "context window",
        "exceed context limit",
    )
    return any(marker in lowered for marker in markers)


def _error_message(text: str) -> str:
    """The ``message`` of an OpenAI- or Anthropic-shaped error body, else the (trimmed) body."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()[:500]
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return text.strip()[:500]


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _mapped(exc: http1.HTTPError, provider_id: str) -> UpstreamError:
    """The one place transport failures become ``UpstreamError``."""
    if isinstance(exc, http1.Timeout):
        return UpstreamError("timeout", f"upstream did not answer in time: {exc}", provider_id=provider_id)
    if isinstance(exc, http1.ConnectFailed):
        return UpstreamError("transient", f"cannot connect to upstream: {exc}", provider_id=provider_id)
    if isinstance(exc, http1.Disconnected):
        return UpstreamError(
            "transient", "upstream closed the connection mid-response", provider_id=provider_id
        )
    return UpstreamError("transient", f"upstream connection error: {exc}", provider_id=provider_id)
