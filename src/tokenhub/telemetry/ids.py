"""Random ids for requests and their log rows: ``secrets.token_hex``'s values, read from the OS in bulk.

Each ``secrets.token_hex`` is a ``getrandom`` system call; two a request were ~2 % of the gateway's CPU at
concurrency 64 (perf, Python frames). One read of 4 KiB serves 256 ids. Like ``secrets``, this is
process-wide state with nothing to configure; a forked child starts on a fresh read, so it cannot repeat
its parent's ids.
"""

from __future__ import annotations

import os
import threading

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
