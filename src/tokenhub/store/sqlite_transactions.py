"""Short transactions on a SQLite file from the request path: run at once on the caller's thread when the
file's write lock is free, else on a thread of their own that waits for it.

Through SQLAlchemy's aiosqlite adapter every step of a transaction is a trip to the connection's thread and
back — each statement, its cursor, the commit, the pool's reset on return — and each trip wakes a thread
both ways. A budget's reservation and settlement took 16 trips: 2.4 ms of CPU a request on the bench
machine (one trip each, on a thread, 0.37 ms; both run at once, 0.05 ms). A transaction that finds the lock
taken (a batch of request logs being written, another process) goes to the thread instead, so the event
loop never waits on a lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0  # as the SQLAlchemy engine's connections (store.sql)


class SQLiteTransactions:
    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenhub-sqlite")
        self._waiting: sqlite3.Connection | None = None  # the thread's: waits for the lock
        self._at_once: sqlite3.Connection | None = None  # the first caller's thread's: never waits
        self._at_once_thread: int | None = None

    async def run(
        self,
        work: Callable[[sqlite3.Connection], T],
        undo: Callable[[sqlite3.Connection, T], object] | None = None,
    ) -> T:
        """``work`` in one transaction, committed when it returns, rolled back when it raises. On the thread
        a transaction runs to its end even when the caller is cancelled meanwhile; ``undo`` is then given
        its result, in a transaction of its own."""
        connection = self._at_once
        if connection is None and self._at_once_thread is None:
            self._at_once_thread = threading.get_ident()
            connection = self._at_once = _connect(self._path, timeout=0.0, checkpoints=False)
        if connection is not None and threading.get_ident() == self._at_once_thread:
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
            else:
                return _finish(connection, work)
        job = self._executor.submit(self._on_thread, work)
        try:
            return await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:
            if undo is not None:
                job.add_done_callback(partial(self._undo, undo))
            raise

    async def aclose(self) -> None:
        await asyncio.wrap_future(self._executor.submit(self._close))
        self._executor.shutdown(wait=False)
        if self._at_once is not None:
            self._at_once.close()
            self._at_once = None

    def _on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._waiting
        if connection is None:
            connection = self._waiting = _connect(self._path, timeout=BUSY_TIMEOUT_S, checkpoints=True)
        connection.execute("BEGIN IMMEDIATE")  # the write lock first, so no statement can fail for want of it
        return _finish(connection, work)

    def _undo(self, undo: Callable[[sqlite3.Connection, T], object], job: Future[T]) -> None:
        if not job.cancelled() and job.exception() is None:
            result = job.result()
            self._executor.submit(self._on_thread, lambda connection: undo(connection, result))

    def _close(self) -> None:
        if self._waiting is not None:
            self._waiting.close()
            self._waiting = None


def _finish(connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` inside the transaction ``connection`` has begun, then its end."""
    try:
        result = work(connection)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return result


def _connect(path: str, *, timeout: float, checkpoints: bool) -> sqlite3.Connection:
    # Autocommit mode: transactions are begun and ended explicitly. Without checkpoints the caller's
    # connection never copies the write-ahead log into the file on a commit (milliseconds, now and then);
    # the others' commits do it.
    connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    if not checkpoints:
        connection.execute("PRAGMA wal_autocheckpoint=0")
    return connection
