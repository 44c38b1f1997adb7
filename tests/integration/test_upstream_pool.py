"""The upstream connection pool (llm_relay.upstreams.pool) against real uvicorn servers on loopback: a burst of
requests on a warm pool takes each idle connection once (httpcore's own pool hands one connection to many, which
then go round again: about 8 bookkeeping passes per request instead of 2), a request cancelled while a connection
was being made for it does not leak that connection, and the pool's limits still hold."""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpcore
import httpx
import pytest

from llm_relay.settings import Settings
from llm_relay.upstreams.http import HttpExchange
from llm_relay.upstreams.pool import FairConnectionPool, use_fair_pool
from tests.servers import lifespan, serve
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
            await lifespan(receive, send)
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


def fair_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(limits=limits)
    assert use_fair_pool(transport)
    assert isinstance(transport._pool, FairConnectionPool)
    return transport


@pytest.fixture
def server() -> Iterator[tuple[Server, str]]:
    app = Server()
    with serve(app, timeout_keep_alive=120) as base:  # idle connections outlive any pause of a loaded machine
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


def test_a_burst_on_a_warm_pool_takes_each_idle_connection_once(
    server: tuple[Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, base = server
    requests = 40
    transport = fair_transport(httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=120))
    passes = counting_passes(transport._pool)
    retries = 0  # a request handed a connection another request took first goes round again
    clear = httpcore._async.connection_pool.AsyncPoolRequest.clear_connection

    def counted_clear(self: Any) -> None:
        nonlocal retries
        retries += 1
        clear(self)

    monkeypatch.setattr(httpcore._async.connection_pool.AsyncPoolRequest, "clear_connection", counted_clear)

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):  # the first burst opens the connections, the next two find them all idle
                app.expect(requests)
                await burst(client, f"{base}/x", requests)

    anyio.run(run)
    assert len(app.connections) == requests  # every later request reused one of the first burst's connections
    assert retries == 0
    assert passes() == 3 * 2 * requests  # one pass when each request queued, one when its connection came back


def test_the_connection_limit_queues_requests_until_a_connection_is_released(server: tuple[Server, str]) -> None:
    app, base = server
    transport = fair_transport(httpx.Limits(max_connections=3, max_keepalive_connections=3))

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
    transport = fair_transport(httpx.Limits(max_connections=100, max_keepalive_connections=2))

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
        transport = fair_transport(httpx.Limits(max_connections=10, max_keepalive_connections=10))

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


def test_a_connection_made_for_a_request_cancelled_meanwhile_does_not_keep_its_slot() -> None:
    one, other = Server(), Server()
    with serve(one) as first_base, serve(other) as other_base:
        transport = fair_transport(httpx.Limits(max_connections=1, max_keepalive_connections=1))
        pool = transport._pool

        async def run() -> None:
            timeout = httpx.Timeout(10.0, pool=2.0)
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
                holding = await client.send(client.build_request("GET", f"{first_base}/x"), stream=True)
                async with anyio.create_task_group() as tg:
                    waiting = anyio.CancelScope()

                    async def queued() -> None:
                        with waiting:
                            await client.get(f"{other_base}/x")  # another origin: it needs a new connection

                    tg.start_soon(queued)
                    while not any(request.is_queued() for request in pool._requests):
                        await anyio.lowlevel.checkpoint()
                    assign = pool._assign_requests_to_connections

                    def cancel_then_assign() -> Any:
                        waiting.cancel()  # the caller gives up in the same tick as the slot comes free
                        return assign()

                    pool._assign_requests_to_connections = cancel_then_assign  # type: ignore[method-assign]
                    await holding.aread()
                    await holding.aclose()  # the pass evicts the idle connection and makes one for `queued`
                    del pool._assign_requests_to_connections
                # the never-used connection does not hold the only slot: the next request gets one
                response = await client.get(f"{first_base}/x")
                assert response.status_code == 200
                assert [c.is_idle() for c in pool.connections] == [True]

        anyio.run(run)
    assert other.arrived == 0


def test_a_request_that_times_out_waiting_for_a_connection_leaves_the_queue(server: tuple[Server, str]) -> None:
    _, base = server
    transport = fair_transport(httpx.Limits(max_connections=1, max_keepalive_connections=1))
    pool = transport._pool

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10.0, pool=0.2)) as client:
            holding = await client.send(client.build_request("GET", f"{base}/x"), stream=True)
            with pytest.raises(httpx.PoolTimeout):
                await client.get(f"{base}/x")
            assert len(pool._requests) == 1  # only the one holding the connection
            await holding.aread()
            await holding.aclose()
            assert (await client.get(f"{base}/x")).status_code == 200

    anyio.run(run)


def test_a_full_pool_closes_an_idle_connection_to_another_origin_to_make_room() -> None:
    one, other = Server(), Server()
    with serve(one) as first_base, serve(other) as other_base:
        transport = fair_transport(httpx.Limits(max_connections=1, max_keepalive_connections=1))

        async def run() -> None:
            async with httpx.AsyncClient(transport=transport) as client:
                assert (await client.get(f"{first_base}/x")).status_code == 200
                (idle,) = transport._pool.connections
                assert (await client.get(f"{other_base}/x")).status_code == 200
                assert idle.is_closed() and idle not in transport._pool.connections

        anyio.run(run)
    assert len(one.connections) == 1 and len(other.connections) == 1


def test_the_relay_opens_upstreams_through_this_pool() -> None:
    exchange = HttpExchange(Settings())
    transport = exchange.client._transport
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    assert isinstance(transport._pool, FairConnectionPool)
    anyio.run(exchange.aclose)


def test_only_httpxs_own_transport_gets_the_pool() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    assert not use_fair_pool(mock)


async def paced(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/hang` answers after 50 ms, `/slow` sends its body in 5 pieces 5 ms apart, anything else at once."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/hang":
        await anyio.sleep(0.05)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    pieces = 5 if path == "/slow" else 1
    for i in range(pieces):
        if path == "/slow":
            await anyio.sleep(0.005)
        await send({"type": "http.response.body", "body": b"x" * 10, "more_body": i < pieces - 1})


@pytest.mark.parametrize("seed", [1, 4, 13])
def test_random_cancellations_keep_every_pool_invariant(seed: int) -> None:
    # GIVEN a small pool (4 connections, 2 kept idle) over two origins, every pass checked as it returns
    rng = random.Random(seed)
    violations: Counter[str] = Counter()
    with serve(paced) as a, serve(paced) as b:
        transport = fair_transport(httpx.Limits(max_connections=4, max_keepalive_connections=2))
        pool = transport._pool
        assign = pool._assign_requests_to_connections

        def checked() -> Any:
            held_before = {r.connection for r in pool._requests if r.connection is not None}
            closing = assign()
            held = [r.connection for r in pool._requests if r.connection is not None]
            if len(pool.connections) > 4:
                violations["over max_connections"] += 1
            if len(held) != len(set(held)):
                violations["a connection held by two requests"] += 1
            free = [c for c in pool.connections if c.is_idle() and c not in held and not c.has_expired()]
            if any(r.is_queued() for r in pool._requests) and (len(pool.connections) < 4 or free):
                violations["queued while a connection was free"] += 1
            if any(c in held_before.union(held) and not c.has_expired() for c in closing):
                violations["a held connection closed"] += 1
            return closing

        pool._assign_requests_to_connections = checked  # type: ignore[method-assign]

        async def one(client: httpx.AsyncClient) -> None:
            url = rng.choice([a, b]) + rng.choice(["/fast", "/slow", "/hang"])
            give_up_after = rng.choice([None, None, 0.0, 0.001, 0.003, 0.01, 0.03])
            leave_mid_body = rng.random() < 0.2
            with anyio.move_on_after(give_up_after), contextlib.suppress(httpx.PoolTimeout):
                async with client.stream("GET", url) as response:
                    async for _ in response.aiter_raw():
                        if leave_mid_body:
                            break

        async def run() -> None:
            async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=3.0)) as client:
                for _ in range(30):  # WHEN bursts of requests are cancelled queued, mid-open and mid-body
                    async with anyio.create_task_group() as tg:
                        for _ in range(rng.randint(1, 20)):
                            tg.start_soon(one, client)
                            if rng.random() < 0.3:
                                await anyio.lowlevel.checkpoint()
                # THEN no pass broke an invariant, and the pool ends with no request and only idle connections
                assert violations == Counter()
                assert pool._requests == []
                assert all(c.is_idle() for c in pool.connections)
                assert (await client.get(f"{a}/fast")).status_code == 200

        anyio.run(run)
