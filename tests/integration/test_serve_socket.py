"""The production entry point's server on a real socket: every connection it accepts is a TCP connection with
TCP_NODELAY and the bounded buffers, so a token leaves at once instead of waiting for the client's delayed ACK."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from llm_relay.serve import SEND_BUFFER_BYTES, http_server
from tests.waiting import wait_until


@pytest.fixture
def server() -> Iterator[tuple[object, str]]:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uvicorn_server, sock = http_server(app, "127.0.0.1", port, log_config=None, lifespan="off")
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: uvicorn_server.started, "the server started")
    try:
        yield uvicorn_server, f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


def test_accepted_connections_have_tcp_nodelay_and_the_bounded_send_buffer(server: tuple[object, str]) -> None:
    uvicorn_server, url = server
    # GIVEN a kept-alive client connection to the production server
    with httpx.Client() as client:
        assert client.get(url).text == "hello"
        # WHEN the server's side of that connection is looked at
        connections = list(uvicorn_server.server_state.connections)  # type: ignore[attr-defined]
        assert len(connections) == 1
        sock = connections[0].transport.get_extra_info("socket")
        # THEN it is a TCP connection with Nagle's algorithm off, and the send buffer the listening socket set
        assert sock.family == socket.AF_INET
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * SEND_BUFFER_BYTES
