"""Upstream body reads (llm_relay.upstreams.body_reads) against real servers on loopback, over TCP and TLS: once
the headers are in, a body read waits without a timeout (the relay's stream watcher bounds it, tested in
test_failures and tests/unit/test_stream), while the wait for the headers keeps the client's read timeout, and a
connection broken or closed mid-body raises what httpx raises with httpcore's own reads."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llm_relay.settings import Settings
from llm_relay.upstreams.base import UpstreamRequest
from llm_relay.upstreams.body_reads import LeanReadBackend, LeanReadStream, untimed_body, use_lean_reads
from llm_relay.upstreams.http import HttpExchange
from tests.servers import lifespan, serve

READ_TIMEOUT_S = 0.2


class Paced:
    """`/late-headers` sends its headers once `release` is set; `/late-body` sends its headers at once and its
    body once `release` is set; `/at-once` answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/late-headers":
            await anyio.to_thread.run_sync(self.release.wait)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        if path == "/late-body":
            await anyio.to_thread.run_sync(self.release.wait)
        await send({"type": "http.response.body", "body": b"-last"})


async def outlives_the_read_timeout(pieces: AsyncIterator[bytes], app: Paced) -> list[bytes]:
    """Read the first piece, then wait for the rest in a task; three read timeouts later (the one wait here that
    is a duration: it is what the test is about), release the rest. A read that timed out fails the task group."""
    got = [await anext(pieces)]

    async def rest() -> None:
        got.extend([piece async for piece in pieces])

    async with anyio.create_task_group() as tg:
        tg.start_soon(rest)
        await anyio.sleep(3 * READ_TIMEOUT_S)
        assert got == [b"first"], "the rest arrived before it was released"
        app.release.set()
    return got


def lean_client(verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(verify=verify)
    assert use_lean_reads(transport)
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, read=READ_TIMEOUT_S))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: its PEM file and its key's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-relay test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(params=["tcp", "tls"])
def server(request: pytest.FixtureRequest, certificate: tuple[Path, Path]) -> Iterator[tuple[Paced, str, Any]]:
    """The paced app over plain TCP and over TLS, with the client verification that trusts it."""
    app = Paced()
    cert_file, key_file = certificate
    options: dict[str, Any] = {}
    verify: ssl.SSLContext | bool = True
    if request.param == "tls":
        options = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}
        verify = ssl.create_default_context(cafile=str(cert_file))
    with serve(app, **options) as base:
        try:
            yield app, base, verify
        finally:
            app.release.set()  # a test that failed early leaves no server thread waiting


@pytest.fixture
def timeout_scopes(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeouts of the `anyio.fail_after` scopes entered (httpcore enters one per read it bounds)."""
    entered: list[float | None] = []
    fail_after = anyio.fail_after

    def counted(delay: float | None, shield: bool = False) -> Any:
        entered.append(delay)
        return fail_after(delay, shield)

    monkeypatch.setattr(anyio, "fail_after", counted)
    return entered


def test_an_untimed_body_waits_past_the_read_timeout_without_a_scope_per_read(
    server: tuple[Paced, str, Any], timeout_scopes: list[float | None]
) -> None:
    app, base, verify = server

    async def main() -> None:
        async with lean_client(verify) as client, client.stream("GET", f"{base}/late-body") as response:
            assert isinstance(response.extensions["network_stream"], LeanReadStream)  # TLS too, after start_tls
            untimed_body(response)
            timeout_scopes.clear()
            assert await outlives_the_read_timeout(response.aiter_raw(), app) == [b"first", b"-last"]
            assert timeout_scopes == []

    run(main)


def test_a_body_keeps_its_read_timeout_unless_untimed(
    server: tuple[Paced, str, Any], timeout_scopes: list[float | None]
) -> None:
    _, base, verify = server

    async def main() -> None:
        async with lean_client(verify) as client, client.stream("GET", f"{base}/late-body") as response:
            pieces = response.aiter_raw()
            timeout_scopes.clear()
            assert await anext(pieces) == b"first"
            with pytest.raises(httpx.ReadTimeout):
                await anext(pieces)
            assert READ_TIMEOUT_S in timeout_scopes

    run(main)


def test_the_wait_for_headers_keeps_the_read_timeout(server: tuple[Paced, str, Any]) -> None:
    _, base, verify = server

    async def main() -> None:
        async with lean_client(verify) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"{base}/late-headers")

    run(main)


HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"


class RawServer:
    """One connection on a raw socket: reads the request and sends `head`. Then "hold": wait for the client to
    close (`client_closed` is set when it does); "reset" or "close": wait for `go` (set by the test), then end
    with a reset (SO_LINGER 0) or a close (FIN)."""

    def __init__(self, head: bytes, ending: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.head, self.ending = head, ending
        self.go, self.client_closed = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._answer, daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(self.head)
            if self.ending == "hold":
                conn.settimeout(10)
                if conn.recv(1) == b"":
                    self.client_closed.set()
                return
            self.go.wait(10)
            if self.ending == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def close(self) -> None:
        self.go.set()
        self.thread.join(10)
        self.listener.close()


@contextlib.contextmanager
def raw_server(head: bytes, ending: str) -> Iterator[RawServer]:
    server = RawServer(head, ending)
    try:
        yield server
    finally:
        server.close()


def run(main: Callable[[], Awaitable[None]]) -> None:
    """`anyio.run`, failing instead of hanging if a read the test expects to end never does."""

    async def bounded() -> None:
        with anyio.fail_after(10):
            await main()

    anyio.run(bounded)


@pytest.mark.parametrize(("ending", "raised"), [("reset", httpx.ReadError), ("close", httpx.RemoteProtocolError)])
def test_a_connection_broken_mid_body_raises_what_httpx_raises(ending: str, raised: type[Exception]) -> None:
    """A reset is a `ReadError`, a close before the chunked body's end a `RemoteProtocolError` (the stream's
    `upstream_error`), as with httpcore's own reads."""
    with raw_server(HEAD_CHUNKED, ending) as server:

        async def main() -> None:
            async with lean_client() as client, client.stream("GET", server.url) as response:
                untimed_body(response)
                pieces = response.aiter_raw()
                assert await anext(pieces) == b"first"
                server.go.set()
                with pytest.raises(raised):
                    await anext(pieces)

        run(main)


def test_a_body_delimited_by_the_close_ends_cleanly() -> None:
    """No length, no chunking: the end of the connection is the end of the body (an untimed read sees b"")."""
    with raw_server(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nwhole body", "close") as server:

        async def main() -> None:
            async with lean_client() as client, client.stream("GET", server.url) as response:
                untimed_body(response)
                server.go.set()
                assert b"".join([piece async for piece in response.aiter_raw()]) == b"whole body"

        run(main)


def test_a_cancelled_untimed_read_closes_the_connection_at_once() -> None:
    """The client cancel path: an untimed read cancelled mid-body closes the upstream connection (the server sees
    it closed) and leaves nothing in the pool."""
    with raw_server(HEAD_CHUNKED, "hold") as server:

        async def main() -> None:
            async with lean_client() as client:
                async with client.stream("GET", server.url) as response:
                    untimed_body(response)
                    pieces = response.aiter_raw()
                    assert await anext(pieces) == b"first"
                    with anyio.move_on_after(0.1) as scope:  # the server holds the rest: the read waits
                        await anext(pieces)
                    assert scope.cancelled_caught
                assert client._transport._pool.connections == []  # type: ignore[attr-defined]
                assert await anyio.to_thread.run_sync(server.client_closed.wait, 10)

        run(main)


def test_the_next_request_on_a_kept_alive_connection_keeps_its_timeouts(server: tuple[Paced, str, Any]) -> None:
    """An untimed body changes its own request only: the next request on the same connection times out on its
    headers, and on its body unless it is untimed too."""
    app, base, verify = server

    async def main() -> None:
        async with lean_client(verify) as client:
            async with client.stream("GET", f"{base}/at-once") as first:
                untimed_body(first)
                assert b"".join([piece async for piece in first.aiter_raw()]) == b"first-last"
                stream = first.extensions["network_stream"]
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"{base}/late-headers")
            app.release.set()  # the timed-out request's connection is gone; the server finishes its answer
            async with client.stream("GET", f"{base}/at-once") as again:
                assert again.extensions["network_stream"] is not stream  # a new connection after the timeout
            app.release.clear()
            async with client.stream("GET", f"{base}/late-body") as timed:
                assert timed.request.extensions["timeout"]["read"] == READ_TIMEOUT_S
                pieces = timed.aiter_raw()
                assert await anext(pieces) == b"first"
                with pytest.raises(httpx.ReadTimeout):
                    await anext(pieces)

    run(main)


class _Dialect:
    """Enough of a dialect for `HttpExchange.open`: the body is read raw here, never decoded."""

    kind = "openai"

    def decoder(self, model: str, created: int) -> Any:
        return None


def test_the_relay_opens_upstreams_with_lean_reads_and_untimed_bodies() -> None:
    """The relay's own exchange: its transport makes lean streams, and the body of a 2xx answer it opened waits
    past the client's read timeout (which still bounds the wait for headers)."""
    app = Paced()
    settings = Settings(upstream_idle_timeout_s=READ_TIMEOUT_S, upstream_first_token_timeout_s=READ_TIMEOUT_S)

    async def main(base: str) -> None:
        exchange = HttpExchange(settings)
        try:
            pool = exchange.client._transport._pool  # type: ignore[attr-defined]
            assert isinstance(pool._network_backend, LeanReadBackend)
            request = UpstreamRequest(url=f"{base}/late-body", headers={}, content=b"{}")
            opened = await exchange.open(request, _Dialect(), "model")  # type: ignore[arg-type]
            assert await outlives_the_read_timeout(opened.response.aiter_raw(), app) == [b"first", b"-last"]
            await opened.response.aclose()
        finally:
            await exchange.aclose()

    with serve(app) as base:
        try:
            anyio.run(main, base)
        finally:
            app.release.set()


def test_only_httpxs_own_transport_with_the_stock_backend_gets_lean_reads() -> None:
    assert not use_lean_reads(httpx.MockTransport(lambda request: httpx.Response(200)))
    transport = httpx.AsyncHTTPTransport()
    transport._pool._network_backend = httpcore.AnyIOBackend()
    assert not use_lean_reads(transport)
    assert type(transport._pool._network_backend) is httpcore.AnyIOBackend
    assert not use_lean_reads(httpx.AsyncHTTPTransport(http2=True, http1=False))
