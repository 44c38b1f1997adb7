"""An ASGI app served on a loopback port from a background thread, for dev tools that need a second server
next to the relay (the dev server's mock upstream, `make invoke`'s upstream)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from llm_relay.serve import http_protocol


@contextmanager
def serve_in_thread(
    app: ASGIApp, host: str = "127.0.0.1", start_timeout_s: float = 10.0, lifespan: Literal["on", "off"] = "off"
) -> Iterator[str]:
    """Serve `app` on `host`:<ephemeral port> until the block exits; yields the base URL. The thread has its
    own event loop and installs no signal handlers (uvicorn only does so in the main thread), so the relay
    in the main thread keeps its loop and its Ctrl-C handling to itself, and it leaves the process's logging as the
    main server set it (uvicorn's default configuration would give its loggers their own handlers again, past
    `make dev`'s console). `lifespan="on"` for an app that needs its start-up (a relay behind the function-URL
    front)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan=lifespan, access_log=False, log_config=None, http=http_protocol()
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dev-server", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread, start_timeout_s)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread, timeout_s: float) -> None:
    """uvicorn exposes a `started` flag, not an event: poll it, failing fast if the thread died."""
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the background server did not start")
        time.sleep(0.005)
