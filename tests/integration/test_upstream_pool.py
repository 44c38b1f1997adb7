"""The upstream connection pool (llm_relay.upstreams.pool) against a real uvicorn server on loopback: a burst of
requests on a warm pool takes each idle connection once (httpcore's own pool hands one connection to many and
goes round again: about nine bookkeeping passes per request instead of two), and the pool's limits still hold."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from llm_relay.settings import Settings
from llm_relay.upstreams.http import HttpExchange
from llm_relay.upstreams.pool import FairConnectionPool, pooled_transport
from tests.servers import serve
from tests.waiting import wait_until


@dataclass
class Server:
    """Counts the client connections it sees; each request waits until `hold_until` requests have arrived."""

    hold_until: int = 0
    arrived: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    connections: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Event = field(default_factory=threading.Event)

    def expect(self, requests: int) -> None:
        """The next `requests` requests are held until all of them have arrived (so they overlap)."""
        with self.lock:
            self.hold_until = self.arrived + requests
            self.gate.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        with self.lock:
            self.connections.add(scope["client"][1])
            self.arrived += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.arrived >= self.hold_until:
                self.gate.set()
        try:
            await anyio.to_thread.run_sync(self.gate.wait)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def server() -> Iterator[tuple[Server, str]]:
    app = Server()
    with serve(app) as base:
        yield app, base


def counting_passes(pool: Any) -> Callable[[], int]:
    """Count the pool's bookkeeping passes (one each time a request is queued or a connection released)."""
    passes = 0
    assign = pool._assign_requests_to_connections

    def counted() -> Any:
        nonlocal passes
        passes += 1
        return assign()

    pool._assign_requests_to_connections = counted
    return lambda: passes


async def burst(client: httpx.AsyncClient, url: str, requests: int) -> None:
    async def one() -> None:
        response = await client.get(url)
        assert response.status_code == 200 and response.content == b"ok"

    async with anyio.create_task_group() as tg:
        for _ in range(requests):
            tg.start_soon(one)


def test_a_burst_on_a_warm_pool_takes_each_idle_connection_once(server: tuple[Server, str]) -> None:
    app, base = server
    requests = 40
    transport = pooled_transport(httpx.Limits(max_connections=1000, max_keepalive_connections=200))
    assert isinstance(transport._pool, FairConnectionPool)
    passes = counting_passes(transport._pool)

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):  # the first burst opens the connections, the next two find them all idle
                app.expect(requests)
                await burst(client, f"{base}/x", requests)

    anyio.run(run)
    assert len(app.connections) == requests  # every later request reused one of the first burst's connections
    assert passes() == 3 * 2 * requests  # one pass when each request queued, one when its connection came back


def test_the_connection_limit_queues_requests_until_a_connection_is_released(server: tuple[Server, str]) -> None:
    app, base = server
    transport = pooled_transport(httpx.Limits(max_connections=3, max_keepalive_connections=3))

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            app.expect(3)  # the first three are held until all three are in: the rest must queue behind them
            await burst(client, f"{base}/x", 12)

    anyio.run(run)
    assert app.arrived == 12
    assert app.most_in_flight == 3
    assert len(app.connections) == 3


def test_idle_connections_over_the_keep_alive_limit_are_closed(server: tuple[Server, str]) -> None:
    app, base = server
    transport = pooled_transport(httpx.Limits(max_connections=100, max_keepalive_connections=2))

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            app.expect(6)
            await burst(client, f"{base}/x", 6)
            assert len(transport._pool.connections) == 2
            app.expect(2)
            await burst(client, f"{base}/x", 2)

    anyio.run(run)
    assert len(app.connections) == 6  # the second burst reused the two kept connections


def test_a_connection_the_server_closed_is_not_reused() -> None:
    app = Server()
    with serve(app, timeout_keep_alive=1) as base:
        transport = pooled_transport(httpx.Limits(max_connections=10, max_keepalive_connections=10))

        async def run() -> None:
            async with httpx.AsyncClient(transport=transport) as client:
                await burst(client, f"{base}/x", 1)
                (idle,) = transport._pool.connections
                await anyio.to_thread.run_sync(
                    lambda: wait_until(idle.has_expired, "the server closes the idle connection")
                )
                await burst(client, f"{base}/x", 1)
                assert transport._pool.connections and idle not in transport._pool.connections

        anyio.run(run)
    assert len(app.connections) == 2


def test_the_relay_opens_upstreams_through_this_pool() -> None:
    exchange = HttpExchange(Settings())
    transport = exchange.client._transport
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    assert isinstance(transport._pool, FairConnectionPool)
    anyio.run(exchange.aclose)
