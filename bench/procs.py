"""The processes the runner starts: spawn, bounded waits, stop by PID, and what /proc says about them."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

STOP_TIMEOUT_S = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A process the benchmark needs did not start (or died): the run cannot go on."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A child process with its output in a log file (or its stdout piped) and a bounded stop."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        pipe_stdout: bool = False,
        pipe_stdin: bool = False,
    ) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as output:
            self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and the temporal CLI
                argv,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdout else output,
                stderr=output,
            )
        self.lines = LineReader(self.popen.stdout.fileno()) if self.popen.stdout is not None else None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise StartError(f"{self.name} exited with status {self.popen.returncode}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL, as an outage would (the Temporal dev server in ``temporal_down``)."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL after a bounded wait."""
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class LineReader:
    """Lines from a pipe with a deadline (a plain readline could wait forever on a hung child)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def readline(self, timeout_s: float) -> bytes | None:
        """The next line without its newline; None on timeout or end of file."""
        deadline = time.monotonic() + timeout_s
        while (end := self._buffer.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._fd], [], [], remaining)[0]:
                return None
            data = os.read(self._fd, 1 << 16)
            if not data:
                return None
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line


def wait_for_line(proc: Proc, expected: bytes, timeout_s: float) -> None:
    if proc.lines is None:
        raise StartError(f"{proc.name}: stdout is not piped")
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        line = proc.lines.readline(remaining)
        if line is None:
            break
        if line.strip() == expected:
            return
    proc.check_alive()
    raise StartError(f"{proc.name} did not print {expected!r} within {timeout_s:g}s\n{proc.log_tail()}")


def wait_until(proc: Proc, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Poll ``ready`` every 0.1 s until it holds; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        proc.check_alive()
        if time.monotonic() > deadline:
            raise StartError(f"{proc.name}: {what} not ready within {timeout_s:g}s\n{proc.log_tail()}")
        time.sleep(0.1)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - a local http URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc/<pid>/stat (fields 14 and 15; the name may contain spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A ``Vm*`` line of /proc/<pid>/status in MB (VmRSS now, VmHWM the lifetime peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS in a background thread while a ``with`` block runs."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._started = time.monotonic()
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)

    @property
    def peak_mb(self) -> float | None:
        return max((mb for _, mb in self.samples), default=None)

    def _sample(self) -> None:
        while True:
            self._take()
            if self._stop.wait(self._interval_s):
                return

    def _take(self) -> None:
        mb = memory_mb(self._pid)
        if mb is not None:
            self.samples.append((time.monotonic() - self._started, mb))

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._take()  # the end state, however short the block was
