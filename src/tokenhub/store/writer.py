"""Request logs are written in batches off the request path.

A request only enqueues its row; a background task writes whatever has gathered every flush interval.
Shutdown flushes everything; a crash loses at most the rows of the last interval. A failing database
delays rows (they are retried), it does not drop them, and a full queue makes callers wait rather
than lose rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import structlog

from tokenhub.store.models import RequestLog
from tokenhub.store.sql import Store

log = structlog.get_logger(__name__)
SHUTDOWN_FLUSH_S = 10.0


class RequestLogWriter:
    def __init__(
        self, store: Store, *, flush_interval_s: float, max_batch: int = 500, max_queue: int = 100_000
    ) -> None:
        self._store = store
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._max_queue = max_queue
        # A deque and the writers waiting for room, not an asyncio.Queue: its put_nowait and get_nowait
        # are five Python calls each, on every request.
        self._queue: deque[RequestLog] = deque()
        self._room: deque[asyncio.Future[None]] = deque()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # A batch whose write failed; it is written again before anything newer.
        self._pending: list[RequestLog] = []

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="request-log-writer")

    async def write(self, row: RequestLog) -> None:
        while len(self._queue) >= self._max_queue:  # only then a wait, for a flush to make room
            room = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room
        self._queue.append(row)

    async def flush(self) -> None:
        """Write everything queued so far, now. Rows queued while it writes wait for the next flush: under
        steady load, chasing them kept the writer busy with batches of a few rows, one after the other
        (measured: 8 rows a batch instead of 200, and ~0.27 ms more gateway CPU per request)."""
        async with self._lock:
            left = len(self._queue)
            while self._pending or left:
                if not self._pending:
                    count = min(self._max_batch, left)
                    self._pending = [self._queue.popleft() for _ in range(count)]
                    left -= count
                    self._make_room()
                await self._store.write_request_logs(self._pending)
                self._pending = []

    def _make_room(self) -> None:
        while self._room and len(self._queue) < self._max_queue:
            room = self._room.popleft()
            if not room.done():
                room.set_result(None)

    async def aclose(self) -> None:
        if self._task is not None:
            # Stopped between flushes, never inside one: a write cancelled half way leaves its transaction
            # holding SQLite's lock, and the final flush below would wait for it, then give up.
            async with self._lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with asyncio.timeout(SHUTDOWN_FLUSH_S):
                while self._queue or self._pending:
                    await self.flush()
        except Exception:  # a database that is down at shutdown must not hang it; say what is lost
            log.exception("request_logs_lost_at_shutdown", rows=len(self._queue) + len(self._pending))

    async def _run(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._interval if failures == 0 else min(30.0, self._interval * 2**failures))
            try:
                await self.flush()
                failures = 0
            except Exception:
                failures += 1
                log.exception("request_log_write_failed", queued=len(self._queue), attempt=failures)
