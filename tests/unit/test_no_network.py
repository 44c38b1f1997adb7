"""The unit suite's network guard (tests/unit/conftest.py) really refuses the network."""

from __future__ import annotations

import asyncio
import socket

import anyio
import httpx
import pytest

from tests.unit.conftest import NetworkBlocked


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_connect_and_bind_raise(family: socket.AddressFamily) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    for call, address in (("connect", (host, 9)), ("connect_ex", (host, 9)), ("bind", (host, 0))):
        with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(NetworkBlocked):
            getattr(sock, call)(address)


def test_create_connection_raises() -> None:
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_udp_sendto_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(NetworkBlocked):
        sock.sendto(b"x", ("127.0.0.1", 9))


def test_asyncio_open_connection_raises() -> None:
    async def connect() -> None:
        await asyncio.open_connection("127.0.0.1", 9)

    with pytest.raises(NetworkBlocked):
        asyncio.run(connect())


def test_httpx_clients_raise() -> None:
    with pytest.raises(NetworkBlocked):
        httpx.get("http://127.0.0.1:9/")

    async def fetch() -> None:
        async with httpx.AsyncClient() as client:
            await client.get("http://127.0.0.1:9/")

    with pytest.raises(BaseException) as caught:  # anyio's happy-eyeballs connect groups what it raises
        anyio.run(fetch)
    assert _blocked(caught.value)


def _blocked(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_blocked(inner) for inner in exc.exceptions)
    return isinstance(exc, NetworkBlocked)


def test_unix_socket_pairs_still_work() -> None:
    # asyncio's own self-pipe is a socket pair: the guard leaves non-IP sockets alone
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"ok")
        assert right.recv(2) == b"ok"
