"""Request and log ids come from one bulk read of the OS's generator: they must still never repeat — across
reads, across threads, and between a process and the child it forks."""

from __future__ import annotations

import os
import re
import threading
import time

from tokenhub.telemetry.ids import ordered_id, random_hex


def test_ids_are_hex_of_the_asked_length_and_never_repeat_across_reads() -> None:
    ids = [random_hex() for _ in range(3000)]  # ~12 reads of 4 KiB
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert re.fullmatch(r"[0-9a-f]{10000}", random_hex(5000))  # longer than one read


def test_threads_taking_ids_at_once_get_different_ones() -> None:
    taken: list[list[str]] = [[] for _ in range(4)]

    def take(out: list[str]) -> None:
        out.extend(random_hex() for _ in range(2000))

    threads = [threading.Thread(target=take, args=(out,)) for out in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    ids = [i for out in taken for i in out]
    assert len(ids) == 8000 and len(set(ids)) == 8000


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    random_hex()  # the parent holds a partly used read, which the child inherits
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out at once
        os.write(write_end, "".join(random_hex() for _ in range(4)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode()
    parent = "".join(random_hex() for _ in range(4))
    assert len(child) == len(parent) == 128
    assert child != parent


def test_ordered_ids_sort_by_the_time_they_were_made_and_never_repeat() -> None:
    first = [ordered_id() for _ in range(1000)]
    time.sleep(0.002)
    later = [ordered_id() for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in first + later)
    assert len(set(first + later)) == 2000
    assert max(first) < min(later)
    assert abs(int(later[0][:12], 16) - time.time() * 1000) < 60_000  # the prefix is the time in ms
