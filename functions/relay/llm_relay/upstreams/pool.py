"""The upstream connection pool: httpx's own transport, with one pass of httpcore's pool bookkeeping replaced.

httpcore (1.0.x) re-examines its whole pool each time a request starts or a response closes, and that pass costs
O(connections²): for every idle connection it counts the pool again, and it polls every idle socket. Worse, a
burst of requests against a warm pool is handed the same idle connection: each request is assigned the first idle
connection, all but one then fail with `ConnectionNotAvailable` and go round again. With 50 keep-alive
connections to the upstream, a burst of 50 streams spent about 7 passes per request at a few hundred microseconds
each, in the event loop that relays every other stream's chunks (the upstream open took 170 ms at p50 instead of
50). The fix is upstream's own proposal (encode/httpcore#1035, merged in the pydantic/httpx2 fork as #974 and
#1075), applied here to the pinned httpcore:

- one walk over the connections: closed ones dropped, expired ones closed, surplus idle ones (over
  `max_keepalive_connections`, oldest first) closed;
- each queued request gets an idle connection no other request holds yet, else a new connection, else (pool
  full) an idle connection to another origin is closed to make room; otherwise it stays queued, as before.

Only HTTP/1.1 (the relay never asks for HTTP/2: a connection serves one request at a time). Everything else,
connecting, TLS, proxies, timeouts, the errors httpx raises, is httpx's and httpcore's own.
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
            elif connection.is_idle() and connection not in held:
                idle.append(connection)
        surplus = len(idle) - self._max_keepalive_connections
        for connection in idle[: max(0, surplus)]:  # the oldest idle connections first
            self._connections.remove(connection)
            closing.append(connection)
        idle = idle[max(0, surplus) :]

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


def pooled_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's default transport (TLS, proxies from the environment excepted), its pool a `FairConnectionPool`."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    pool = transport._pool
    if type(pool) is not httpcore.AsyncConnectionPool:  # a later httpx builds something else: keep it as it is
        return transport
    pool.__class__ = FairConnectionPool
    return transport
