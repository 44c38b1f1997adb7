"""The upstream connection pool: httpx's own transport, with one pass of httpcore's pool bookkeeping replaced.

httpcore (1.0.x) re-examines its whole pool each time a request starts or a response closes, and that pass costs
O(connections²): for every idle connection it counts the pool again. Worse, a burst of requests against a warm
pool is handed the same idle connection: each request is assigned the first idle connection, all but one then
fail with `ConnectionNotAvailable` and go round again. With 50 keep-alive connections to the upstream, a burst of
50 streams spent about 8 passes per request, in the event loop that relays every other stream's chunks (the
upstream open took 170 ms at p50 instead of 50). The fix is upstream's own proposal (encode/httpcore#1035, merged
in the pydantic/httpx2 fork as #974 and #1075), applied here to httpcore 1.0:

- one walk over the connections: closed ones dropped, expired ones closed (`has_expired` still polls each idle
  socket once, as httpcore does), surplus idle ones (over `max_keepalive_connections`, first opened first) closed;
  httpcore compared the count of all connections with that limit, so with more than 200 open it closed every
  connection as soon as it went idle;
- a connection handed to a request that was cancelled before it could use it (never connected, held by nobody)
  is closed: httpcore kept it forever, a slot of `max_connections` lost (encode/httpcore#1093);
- each queued request gets an idle connection no other request holds yet, else a new connection, else (pool
  full) an idle connection to another origin is closed to make room; otherwise it stays queued, as in httpcore's pass.

Only HTTP/1.1 (the relay never asks for HTTP/2: a connection serves one request at a time), and only on the
httpcore 1.0 it was written against: anything else keeps its own pool. Everything else, connecting, TLS, proxies,
timeouts, the errors httpx raises, is httpx's and httpcore's own.
"""

from __future__ import annotations

import httpcore
import httpx
from httpcore import AsyncConnectionInterface


class FairConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool with a linear assignment pass that hands each idle connection to one request."""

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        closing: list[AsyncConnectionInterface] = []
        held = {request.connection for request in self._requests if request.connection is not None}
        idle: list[AsyncConnectionInterface] = []
        for connection in list(self._connections):
            if connection.is_closed():
                self._connections.remove(connection)
            elif connection.has_expired():
                self._connections.remove(connection)
                closing.append(connection)
            elif connection not in held:
                if connection.is_idle():
                    idle.append(connection)
                else:  # neither idle nor in use: given to a request that was cancelled before it started
                    self._connections.remove(connection)
                    closing.append(connection)
        surplus = max(0, len(idle) - self._max_keepalive_connections)
        for connection in idle[:surplus]:
            self._connections.remove(connection)
            closing.append(connection)
        idle = idle[surplus:]

        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            reuse = next((c for c in idle if c.can_handle_request(origin) and c.is_available()), None)
            if reuse is not None:
                idle.remove(reuse)
                pool_request.assign_to_connection(reuse)
                continue
            if len(self._connections) >= self._max_connections:
                if not idle:
                    continue  # stays queued until a connection is released
                spare = idle.pop(0)  # an idle connection to another origin makes room
                self._connections.remove(spare)
                closing.append(spare)
            connection = self.create_connection(origin)
            self._connections.append(connection)
            pool_request.assign_to_connection(connection)
        return closing


def http11_pool(transport: httpx.AsyncBaseTransport) -> httpcore.AsyncConnectionPool | None:
    """The pool of httpx's own transport, on the httpcore 1.0 and HTTP/1.1 that this module and `body_reads` were
    written against; None for anything else."""
    pool = getattr(transport, "_pool", None)
    if (
        not isinstance(transport, httpx.AsyncHTTPTransport)
        or not isinstance(pool, httpcore.AsyncConnectionPool)
        or not httpcore.__version__.startswith("1.0.")
        or pool._http2  # HTTP/2 multiplexes requests on one connection
    ):
        return None
    return pool


def use_fair_pool(transport: httpx.AsyncBaseTransport) -> bool:
    """Give httpx's default transport a `FairConnectionPool` (same settings, same connections: only the class
    changes); False, and nothing changed, for anything it was not written for."""
    pool = http11_pool(transport)
    if pool is None or type(pool) is not httpcore.AsyncConnectionPool:
        return False
    pool.__class__ = FairConnectionPool
    return True
