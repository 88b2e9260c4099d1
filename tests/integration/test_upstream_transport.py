"""The upstream HTTP/1.1 client over real loopback sockets: keep-alive, the three ways a body can end,
compression, TLS, bounded waits, and the failures an upstream can produce on the wire.

Most cases need wire behaviour an ASGI server never produces (a body ended by closing the connection, a
broken status line, an interim 1xx), so a raw asyncio server answers with scripted bytes here; TLS uses the
uvicorn-served fake with a certificate made for the test.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.openai_upstream import FakeOpenAI, Reply, completion
from tests.fakes.server import ServerThread
from tokenhub.engine.errors import UpstreamError
from tokenhub.engine.providers.upstream import UpstreamClient

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
ANSWER = b'{"ok":true}'


def ok(body: bytes = ANSWER, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), head.encode(), body)


class RawServer:
    """Answers each request with the next scripted reply's bytes; counts connections and requests."""

    def __init__(self, replies: list[bytes], *, close_after_each: bool = False) -> None:
        self.replies = replies
        self.close_after_each = close_after_each
        self.connections = 0
        self.requests: list[bytes] = []
        self.ended = asyncio.Event()  # a connection ended

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0) if self.replies else b""
                writer.write(reply)  # nothing once the script is out: that request is left hanging
                await writer.drain()
                if self.close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            self.ended.set()
            writer.close()


@asynccontextmanager
async def raw_server(server: RawServer) -> AsyncIterator[str]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()


@asynccontextmanager
async def client(base_url: str, *, max_connections: int = 4) -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient(
        provider_id="p",
        base_url=base_url,
        headers={"authorization": "Bearer k"},
        max_connections=max_connections,
        connect_timeout=2.0,
    )
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.aclose()


async def post(upstream: UpstreamClient, *, read_timeout: float = 5.0) -> bytes:
    async with upstream.post("/v1/chat/completions", BODY, read_timeout=read_timeout, total_timeout=10) as r:
        return await r.read()


async def test_keep_alive_reuses_one_connection_and_sends_one_well_formed_request() -> None:
    server = RawServer([ok(), ok(), ok(b"chunked-free", "connection: keep-alive")])
    async with raw_server(server) as url, client(url + "/base/") as upstream:
        assert [await post(upstream) for _ in range(3)] == [ANSWER, ANSWER, b"chunked-free"]
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /base/v1/chat/completions HTTP/1.1"
    assert {
        b"authorization: Bearer k",
        b"content-type: application/json",
        b"accept-encoding: identity",
    } <= set(lines)
    assert f"content-length: {len(BODY)}".encode() in lines
    assert body == BODY


async def test_a_body_in_chunks_or_ended_by_closing_is_read_whole() -> None:
    chunked = b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n'
    until_close = b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{"b":2}'
    server = RawServer([chunked, until_close, ok()], close_after_each=False)
    async with raw_server(server) as url, client(url) as upstream:
        assert await post(upstream) == b'{"a":1}'
        # the server closes after this one; the client must not reuse the connection
        server.close_after_each = True
        assert await post(upstream) == b'{"b":2}'
        assert await post(upstream) == ANSWER
    assert server.connections == 2


async def test_gzip_is_decoded_and_an_interim_answer_skipped() -> None:
    packed = gzip.compress(ANSWER * 50)
    server = RawServer([b"HTTP/1.1 100 Continue\r\n\r\n" + ok(packed, "content-encoding: gzip")])
    async with raw_server(server) as url, client(url) as upstream:
        assert await post(upstream) == ANSWER * 50


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    server = RawServer([ok(), ok()], close_after_each=True)  # closes without saying so
    async with raw_server(server) as url, client(url) as upstream:
        assert await post(upstream) == ANSWER
        await asyncio.sleep(0.05)  # the close reaches the client
        assert await post(upstream) == ANSWER
    assert server.connections == 2


@pytest.mark.parametrize(
    ("reply", "error_class", "message"),
    [
        (b"HTTX/1.1 200 OK\r\n\r\n", "transient", "malformed HTTP response"),
        (b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"partial"', "transient", "mid-response"),
        (ok(b"x", "content-encoding: br"), "transient", "unsupported content-encoding"),
        (ok(b"not gzip", "content-encoding: gzip"), "transient", "cannot decompress"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", "timeout", "nothing received for 0.2 s"),
    ],
    ids=["bad-status-line", "closed-mid-body", "unknown-encoding", "bad-gzip", "stalled"],
)
async def test_a_broken_answer_is_an_upstream_error_of_its_class(
    reply: bytes, error_class: str, message: str
) -> None:
    server = RawServer([reply], close_after_each=b"partial" in reply)
    async with raw_server(server) as url, client(url) as upstream:
        with pytest.raises(UpstreamError) as caught:
            await post(upstream, read_timeout=0.2)
    assert caught.value.error_class == error_class
    assert message in str(caught.value)


async def test_waiting_for_a_free_connection_is_bounded() -> None:
    held = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"  # never ends
    server = RawServer([held, ok()])
    async with raw_server(server) as url, client(url, max_connections=1) as upstream:
        async with upstream.post("/v1/x", BODY, read_timeout=5, total_timeout=None) as first:
            chunks = first._connection.chunks()
            assert await anext(chunks) == b"hello"
            with pytest.raises(UpstreamError) as caught:
                await post(upstream, read_timeout=0.2)
            assert caught.value.error_class == "timeout"
            assert "no free connection" in str(caught.value)
        # leaving the first exchange unfinished hung up on it and freed its slot
        await asyncio.wait_for(server.ended.wait(), 5)
        assert await post(upstream) == ANSWER


async def test_connection_refused_is_transient() -> None:
    async with raw_server(RawServer([])) as url:
        pass  # closed: nothing listens on its port now
    async with client(url) as upstream:
        with pytest.raises(UpstreamError) as caught:
            await post(upstream)
    assert caught.value.error_class == "transient"
    assert "cannot connect to upstream" in str(caught.value)


@pytest.fixture
def certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, trusted through SSL_CERT_FILE as an operator would."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokenhub test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    return cert_file, key_file


async def test_https_upstream_is_verified_against_the_trusted_certificates(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_file, key_file = certificate
    fake = FakeOpenAI()
    fake.default = Reply(body=completion("hello"))
    server = ServerThread(fake, lifespan="off", ssl_certfile=cert_file, ssl_keyfile=key_file).start()
    try:
        https_url = server.url.replace("http://", "https://")
        async with client(https_url) as upstream:
            assert orjson.loads(await post(upstream)) == completion("hello")
        monkeypatch.delenv("SSL_CERT_FILE")  # the same server, its certificate no longer trusted
        async with client(https_url) as upstream:
            with pytest.raises(UpstreamError) as caught:
                await post(upstream)
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    finally:
        server.stop()
