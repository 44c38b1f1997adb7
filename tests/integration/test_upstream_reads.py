"""Upstream body reads (llm_relay.upstreams.body_reads) against real servers on loopback, over TCP and TLS: once
the headers are in, a body read waits without a timeout (the relay's stream watcher bounds it, tested in
test_failures and tests/unit/test_stream), while the wait for the headers keeps the client's read timeout, and a
connection broken mid-body is still httpx's `ReadError`."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
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
from tests.servers import serve

READ_TIMEOUT_S = 0.2


class Paced:
    """`/late-headers` sends its headers once `release` is set; `/late-body` sends its headers at once and its
    body once `release` is set; `/at-once` answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
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

    anyio.run(main)


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

    anyio.run(main)


def test_the_wait_for_headers_keeps_the_read_timeout(server: tuple[Paced, str, Any]) -> None:
    _, base, verify = server

    async def main() -> None:
        async with lean_client(verify) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"{base}/late-headers")

    anyio.run(main)


def test_a_connection_reset_mid_body_is_a_read_error() -> None:
    """A raw server: headers and the first chunk of a chunked body, then a reset (SO_LINGER 0)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    reset = threading.Event()

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            reset.wait(10)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()

    async def main() -> None:
        async with lean_client() as client, client.stream("GET", f"http://127.0.0.1:{port}/") as response:
            untimed_body(response)
            pieces = response.aiter_raw()
            assert await anext(pieces) == b"first"
            reset.set()
            with pytest.raises(httpx.ReadError):
                await anext(pieces)

    try:
        anyio.run(main)
    finally:
        reset.set()
        thread.join(10)
        listener.close()


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
