"""The load generator: a long-lived process that runs one block of requests per JSON line on stdin and
answers one JSON line on stdout.

aiohttp on uvloop, because the client decides what can be seen: httpx's async pool tops out at ~150 req/s
at concurrency 64 on this machine, aiohttp at ~3,000 (shared/reference/load-testing.md).

    {"url": ..., "concurrency": C, "requests": N, "stream": bool, "headers": {...}, "body": {...}}
    {..., "rate": R}  the same, starting requests no faster than R a second
    {"open_streams": N, "url": ..., "headers": {...}, "body": {...}}
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvloop

# The first token: a data line with non-empty content (the role chunk carries "content":"").
FIRST_CONTENT = re.compile(rb'"content"\s*:\s*"[^"]')
DONE = b"data: [DONE]"
OVERHEAD_HEADER = "x-tokenhub-overhead-ms"
DISPATCH_HEADER = "x-tokenhub-dispatch"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_read=60)


@dataclass
class Block:
    """What one block of requests saw; latencies only of requests that succeeded."""

    stream: bool
    latencies_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    dispatch: Counter[str] = field(default_factory=Counter)

    def result(self, elapsed_s: float, cpu_s: float) -> dict[str, Any]:
        return {
            "latencies_ms": [round(v, 4) for v in self.latencies_ms],
            "ttft_ms": [round(v, 4) for v in self.ttft_ms],
            "overhead_ms": self.overhead_ms,
            "errors": self.errors,
            "statuses": {str(code): count for code, count in self.statuses.items()},
            "dispatch": dict(self.dispatch),
            "elapsed_s": elapsed_s,
            "cpu_s": cpu_s,
        }

    async def request(
        self, session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str]
    ) -> None:
        start = time.perf_counter()
        ttft: float | None = None
        try:
            async with session.post(url, data=payload, headers=headers) as response:
                self.statuses[response.status] += 1
                self.dispatch[response.headers.get(DISPATCH_HEADER, "none")] += 1
                overhead = _number(response.headers.get(OVERHEAD_HEADER))
                if overhead is not None:
                    self.overhead_ms.append(overhead)
                if self.stream:
                    ttft, complete = await _read_stream(response, start)
                else:
                    await response.read()
                    complete = True
            end = time.perf_counter()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            self.errors += 1
            return
        if response.status >= 400 or not complete or (self.stream and ttft is None):
            self.errors += 1
            return
        self.latencies_ms.append((end - start) * 1000)
        if ttft is not None:
            self.ttft_ms.append(ttft)


async def _read_stream(response: aiohttp.ClientResponse, start: float) -> tuple[float | None, bool]:
    """Read an SSE body to its end: the time to the first content (ms), and whether [DONE] ended it."""
    ttft: float | None = None
    head = b""  # only until the first content is found; a frame can straddle two reads
    tail = b""
    async for data in response.content.iter_any():
        if ttft is None:
            head += data
            if FIRST_CONTENT.search(head):
                ttft = (time.perf_counter() - start) * 1000
                head = b""
        tail = (tail + data)[-64:]
    return ttft, DONE in tail


def _number(text: str | None) -> float | None:
    """A header's float value; None when absent or malformed (a bad header is not a failed request)."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _new_session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=120), timeout=REQUEST_TIMEOUT
    )


class LoadGen:
    def __init__(self) -> None:
        # One session per target, kept across commands so connections stay warm. limit=0 (no limit):
        # the workers bound the concurrency, and a later block may use more workers than an earlier one.
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        url = str(command["url"])
        payload = json.dumps(command.get("body", {})).encode()
        headers = {"content-type": "application/json", **command.get("headers", {})}
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        if "open_streams" in command:
            block = await self._open_streams(int(command["open_streams"]), url, payload, headers)
        else:
            block = Block(stream=bool(command.get("stream", False)))
            session = self._sessions.get(url)
            if session is None:
                session = self._sessions[url] = _new_session(0)
            remaining = int(command["requests"])
            rate = float(command.get("rate") or 0)
            issued = 0

            async def worker() -> None:
                nonlocal remaining, issued
                while remaining > 0:
                    remaining -= 1
                    if rate:  # the i-th request starts at i / rate seconds, or later
                        issued += 1
                        delay = started + (issued - 1) / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await block.request(session, url, payload, headers)

            await asyncio.gather(*(worker() for _ in range(min(int(command["concurrency"]), remaining))))
        return block.result(time.perf_counter() - started, _cpu_seconds() - cpu_before)

    async def _open_streams(self, count: int, url: str, payload: bytes, headers: dict[str, str]) -> Block:
        """``count`` streams opened at once on a fresh connector, so all of them are open together."""
        block = Block(stream=True)
        async with _new_session(count) as session:
            await asyncio.gather(*(block.request(session, url, payload, headers) for _ in range(count)))
        return block

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    loadgen = LoadGen()
    try:
        while line := await reader.readline():
            try:
                reply = await loadgen.run(json.loads(line))
            except (KeyError, TypeError, ValueError) as exc:
                reply = {"error": f"bad command: {exc!r}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await loadgen.aclose()


def main() -> None:
    uvloop.run(serve())


if __name__ == "__main__":
    main()
