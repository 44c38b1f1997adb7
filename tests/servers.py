"""Test servers on loopback: uvicorn in a background thread, on an ephemeral port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from llm_relay.serve import http_protocol, listening_socket


def free_port() -> int:
    """A loopback port nothing listens on now (for a server started in another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(base: str, *, alive: Any = None, timeout: float = 30.0) -> None:
    """Wait until `base`/healthz answers 200; `alive()` returning False (the server process exited) or the
    timeout raises AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if alive is not None and not alive():
            raise AssertionError(f"{base} exited before it became healthy")
        if time.monotonic() > deadline:
            raise AssertionError(f"{base} did not become healthy within {timeout:g}s")
        time.sleep(0.05)


async def lifespan(receive: Any, send: Any) -> None:
    """The ASGI lifespan of a test app with nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


@contextmanager
def serve(app: Any, *, timeout_keep_alive: int = 5, **options: Any) -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1:<free port> until the block exits; yields the base URL. `options` go to
    uvicorn's Config (`ssl_certfile` and `ssl_keyfile` serve https)."""
    sock = listening_socket("127.0.0.1", 0)  # production's: a bounded send buffer
    port = sock.getsockname()[1]
    options.setdefault("http", http_protocol())  # production's too: the bounded write buffer of each connection
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=timeout_keep_alive, **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30  # generous: a loaded machine starts threads late
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.005)
    try:
        yield f"{'https' if 'ssl_certfile' in options else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
