"""Run the mock upstream on an ephemeral loopback port inside the relay's own event loop, so that a relay
started without `RELAY_UPSTREAM_URL` streams from a real socket (true TTFT, real disconnects)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn

from .mock_upstream import create_mock_app


@asynccontextmanager
async def embedded_mock_upstream() -> AsyncIterator[str]:
    """Yields the mock's base URL (ending in /v1) while it serves."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_mock_app(), log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await anyio.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.should_exit = True
    sock.close()
