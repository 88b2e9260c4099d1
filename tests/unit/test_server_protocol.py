"""The gateway's HTTP/1.1 server protocol (``gateway/server.py``), under uvicorn on a loopback port, spoken
to over raw sockets: what a client of the wire sees — keep-alive, pipelining, 100-continue, chunked bodies
both ways, HEAD, errors, idle timeouts, a client leaving.

Two tests drive the protocol with a transport that records writes instead of a socket, because a socket
cannot tell one write from two: that a response's head and body go out in one write is only visible there.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from tests.fakes.server import ServerThread
from tokenhub.gateway.server import CONNECTION_LOST, ConnectionLost, GatewayProtocol

TIMEOUT_S = 5.0
LEFT = threading.Event()  # set by /wait when the connection-lost signal reaches it


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("the app failed")
    if path == "/nothing":
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-kind", b"stream")]})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/short":
        start = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": start})
        await send({"type": "http.response.body", "body": b"12345"})
        return
    if path == "/inject":
        start = [(b"x-evil", b"1\r\nset-cookie: stolen=1")]
        await send({"type": "http.response.start", "status": 200, "headers": start})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/wait":
        lost: ConnectionLost = scope["extensions"][CONNECTION_LOST]
        gone = asyncio.get_running_loop().create_future()
        lost.listen(lambda: gone.set_result(None))
        await asyncio.wait_for(gone, TIMEOUT_S)
        LEFT.set()
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    reply = orjson.dumps(
        {
            "path": path,
            "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "method": scope["method"],
            "length": len(body),
            "tail": body[-8:].decode(),
        }
    )
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": start})
    await send({"type": "http.response.body", "body": reply})


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread(app, lifespan="off", http=GatewayProtocol, timeout_keep_alive=1).start()
    yield running
    running.stop()


@pytest.fixture
def conn(server: ServerThread) -> Iterator[tuple[socket.socket, BinaryIO]]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)
    reader: Any = sock.makefile("rb")
    yield sock, reader
    reader.close()
    sock.close()


def read_response(reader: BinaryIO, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response off the connection: status, headers (lower-case names), body (de-chunked)."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only or status in (100, 204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while (size := int(reader.readline().strip(), 16)) > 0:
            body += reader.read(size)
            assert reader.readline() == b"\r\n"
        assert reader.readline() == b"\r\n"
        return status, headers, body
    return status, headers, reader.read(int(headers.get("content-length", "0")))


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (a read gives EOF or a reset), waiting at most TIMEOUT_S."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_requests_on_one_kept_alive_connection(conn: tuple[socket.socket, BinaryIO]) -> None:
    sock, reader = conn
    for body in (b"{}", b'{"a": 1}', b""):
        sock.sendall(post("/echo", body))
        status, headers, reply = read_response(reader)
        assert status == 200 and "connection" not in headers and "date" in headers
        assert orjson.loads(reply)["length"] == len(body)


def test_pipelined_requests_are_answered_in_order(conn: tuple[socket.socket, BinaryIO]) -> None:
    sock, reader = conn
    sock.sendall(post("/first", b"1") + post("/second", b"22") + post("/third", b"333"))
    paths = [orjson.loads(read_response(reader)[2])["path"] for _ in range(3)]
    assert paths == ["/first", "/second", "/third"]


def test_query_strings_and_escaped_paths_reach_the_app(conn: tuple[socket.socket, BinaryIO]) -> None:
    sock, reader = conn
    sock.sendall(post("/a%20b?x=1&y=%2F", b""))
    seen = orjson.loads(read_response(reader)[2])
    assert seen["path"] == "/a b" and seen["raw_path"] == "/a%20b" and seen["query"] == "x=1&y=%2F"
    sock.sendall(post("http://test/absolute?q=1", b""))  # absolute form, as a proxy sends it
    seen = orjson.loads(read_response(reader)[2])
    assert seen["path"] == "/absolute" and seen["query"] == "q=1"


def test_a_chunked_request_body_arrives_whole(conn: tuple[socket.socket, BinaryIO]) -> None:
    sock, reader = conn
    head = b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    sock.sendall(head + b"5\r\nhello\r\n")
    sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
    seen = orjson.loads(read_response(reader)[2])
    assert seen["length"] == 11 and seen["tail"] == "lo world"


def test_a_body_over_the_read_limit_arrives_whole(conn: tuple[socket.socket, BinaryIO]) -> None:
    """Above 64 KiB waiting the server stops reading until the app takes it (flow control)."""
    sock, reader = conn
    body = b"x" * 1_000_000 + b"the end."
    sock.sendall(post("/echo", body))
    seen = orjson.loads(read_response(reader)[2])
    assert seen["length"] == len(body) and seen["tail"] == "the end."


def test_expect_100_continue_is_answered_before_the_body(conn: tuple[socket.socket, BinaryIO]) -> None:
    sock, reader = conn
    head = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    sock.sendall(head)
    assert read_response(reader)[0] == 100
    sock.sendall(b"body")
    status, _, reply = read_response(reader)
    assert status == 200 and orjson.loads(reply)["length"] == 4


def test_a_stream_is_chunked_and_its_head_comes_before_its_first_event(
    conn: tuple[socket.socket, BinaryIO],
) -> None:
    sock, reader = conn
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
    status, headers, _ = read_response(reader, head_only=True)  # the app is still asleep before its body
    assert status == 200 and headers["x-kind"] == "stream" and headers["transfer-encoding"] == "chunked"
    assert reader.readline() == b"9\r\n" and reader.read(11) == b"data: 1\n\n\r\n"
    assert reader.readline() == b"9\r\n" and reader.read(11) == b"data: 2\n\n\r\n"
    assert reader.readline() == b"0\r\n" and reader.readline() == b"\r\n"


def test_head_requests_get_the_head_only_and_the_connection_goes_on(
    conn: tuple[socket.socket, BinaryIO],
) -> None:
    sock, reader = conn
    sock.sendall(b"HEAD /echo HTTP/1.1\r\nHost: test\r\n\r\n")
    status, headers, _ = read_response(reader, head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    sock.sendall(post("/after", b""))
    assert orjson.loads(read_response(reader)[2])["path"] == "/after"


def test_http_1_0_and_connection_close_end_the_connection(server: ServerThread) -> None:
    for request in (
        b"POST /echo HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
        post("/echo", b"", "Connection: close"),
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
            reader: Any = sock.makefile("rb")
            sock.sendall(request)
            status, headers, _ = read_response(reader)
            assert status == 200 and headers["connection"] == "close"
            assert reader.read() == b""
            reader.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"POST /echo HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400, b"Invalid HTTP request received."),
        (post("/boom", b""), 500, b"Internal Server Error"),  # the app raised
        (post("/nothing", b""), 500, b"Internal Server Error"),  # the app returned without answering
    ],
    ids=["does not parse", "app fails", "app does not answer"],
)
def test_a_request_the_server_cannot_serve_gets_an_error_and_the_connection_closes(
    conn: tuple[socket.socket, BinaryIO], request_bytes: bytes, status: int, message: bytes
) -> None:
    sock, reader = conn
    sock.sendall(request_bytes)
    answered, headers, body = read_response(reader)
    assert (answered, headers["connection"], body) == (status, "close", message)
    assert closed(sock)


@pytest.mark.parametrize("path", ["/short", "/inject"])
def test_a_broken_response_closes_the_connection_without_sending_its_head(
    conn: tuple[socket.socket, BinaryIO], path: str
) -> None:
    """A body shorter than its Content-Length, or a header value that would smuggle in a header: the
    connection closes and nothing of the response was sent (uvicorn sent the short one's head and body)."""
    sock, _ = conn
    sock.sendall(post(path, b""))
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    assert b"stolen" not in received and not received.startswith(b"HTTP/1.1 200")


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    conn: tuple[socket.socket, BinaryIO],
) -> None:
    sock, reader = conn
    sock.sendall(post("/echo", b""))
    assert read_response(reader)[0] == 200
    assert closed(sock)  # within TIMEOUT_S: the server's keep-alive timeout is 1 s


def test_a_request_hears_that_its_client_left(server: ServerThread) -> None:
    LEFT.clear()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(post("/wait", b""))
    assert LEFT.wait(TIMEOUT_S)


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def recorded() -> tuple[GatewayProtocol, Recorder]:
    config = uvicorn.Config(app, lifespan="off")
    protocol = GatewayProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Recorder()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_json_answer_goes_out_in_one_write() -> None:
    protocol, transport = recorded()
    protocol.data_received(post("/echo", b"{}"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and orjson.loads(body)["length"] == 2


async def test_a_streams_head_waits_for_the_end_of_the_turn_only() -> None:
    protocol, transport = recorded()
    protocol.data_received(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n")  # the head, alone
    await asyncio.sleep(0.1)
    assert transport.writes[1:] == [b"9\r\ndata: 1\n\n\r\n", b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]


def test_a_lost_connection_tells_each_listener_once_and_not_those_that_stopped_listening() -> None:
    lost = ConnectionLost()
    heard: list[str] = []
    stays, leaves = (lambda: heard.append("stays")), (lambda: heard.append("leaves"))
    lost.listen(stays)
    lost.listen(leaves)
    lost.ignore(leaves)
    lost.ignore(leaves)  # twice is harmless
    assert not lost.happened
    lost.set()
    lost.set()
    assert lost.happened and heard == ["stays"]
