"""Log lines written while a request runs name it; the set-up is the one ``tokenhub serve`` uses (run in a
child process, since structlog's configuration is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import orjson

SCRIPT = """
import asyncio, structlog
from tokenhub.telemetry.logging import REQUEST_ID, configure_logging
configure_logging("info", "json")
log = structlog.get_logger("t")

async def request(request_id):
    REQUEST_ID.set(request_id)  # what the gateway's middleware does for each request
    await asyncio.sleep(0)
    log.warning("inside", n=1)

async def main():
    await asyncio.gather(request("req_one"), request("req_two"))
    log.warning("outside")

asyncio.run(main())
"""


def test_a_line_logged_during_a_request_carries_its_id_and_only_its_own() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60, check=True)
    lines = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert [(line["event"], line.get("request_id")) for line in lines] == [
        ("inside", "req_one"),
        ("inside", "req_two"),
        ("outside", None),
    ]
    assert lines[0]["n"] == 1 and lines[0]["level"] == "warning"
