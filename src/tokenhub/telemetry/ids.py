"""Ids for requests and their log rows: the time, then random bits read from the OS in bulk.

Each ``secrets.token_hex`` is a ``getrandom`` system call; two a request were ~2 % of the gateway's CPU at
concurrency 64 (perf, Python frames). One read of 4 KiB serves 256 ids. Like ``secrets``, this is
process-wide state with nothing to configure; a forked child starts on a fresh read, so it cannot repeat
its parent's ids.

``ordered_id`` starts with the time so that rows logged one after another have keys next to each other in
the request log's indexes: with random keys every insert landed on its own page of each index, and
SQLite's cost per row grew with the table (measured, 200-row batches: 19 us a row at 6,000 rows, 48 at
36,000; with time-ordered keys 11 us, flat).
"""

from __future__ import annotations

import os
import threading
import time

_READ_BYTES = 4096


class _RandomBytes:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # ids are also made on worker threads (Temporal activities)
        self._reset()

    def _reset(self) -> None:
        self._buffer = b""
        self._at = 0

    def hex(self, nbytes: int) -> str:
        with self._lock:
            at = self._at
            if at + nbytes > len(self._buffer):
                self._buffer, at = os.urandom(max(_READ_BYTES, nbytes)), 0
            self._at = at + nbytes
            return self._buffer[at : at + nbytes].hex()


_source = _RandomBytes()
os.register_at_fork(after_in_child=_source._reset)


def random_hex(nbytes: int = 16) -> str:
    """``nbytes`` random bytes from the OS's generator, as hex (``secrets.token_hex(nbytes)``)."""
    return _source.hex(nbytes)


def ordered_id() -> str:
    """32 hex digits: milliseconds since the epoch (12), then 80 random bits (20). Ids made later sort
    after earlier ones (within a millisecond, in any order); they are as unguessable as their random part."""
    return f"{time.time_ns() // 1_000_000:012x}{random_hex(10)}"
