"""Upstream body reads without a timeout of their own: the stream's watcher already bounds every wait for them.

httpcore (1.0.x) wraps every socket read in `anyio.fail_after(read_timeout)` inside an exception-mapping context
manager: a cancel scope, a timer armed and disarmed, two generator-based context managers, per read. A relayed
stream reads once per upstream event, so that was the largest single cost per chunk. Measured paired (batches of
50 streams of 200 chunks, alternating, same processes; docs/benchmarks.md): relay CPU per stream 18.3 ms with
httpcore's reads, 15.4 ms with these; without the DynamoDB writes 15.9 and 12.6 ms.

Those reads need no timeout of their own. While a body is relayed, `stream.RelayStream`'s watcher ends the stream
at the first-token timeout, the idle timeout and the deadline, and cancels the read waiting then; a remainder read
after the end and the drain of a finished body carry their own `move_on_after`. So once a response's headers have
arrived, `untimed_body` takes the read timeout off its request, and `LeanReadStream.read` skips httpcore's scope
for reads that have none. Everything else stays httpcore's: the wait for the response headers keeps the read
timeout (`HttpExchange`), connecting and writing keep theirs, and the errors are the ones httpcore raises
(`ReadError` for a broken or closed connection, `b""` at its end).

Installed on httpx's own transport only, with httpcore's stock network backend, HTTP/1.1 and the httpcore 1.0 it
was written against (as `upstreams.pool`); anything else keeps its own reads. Through a proxy (HTTP(S)_PROXY) httpx
uses another transport: its reads keep httpcore's scope, and an untimed body is bounded by the watcher the same.
"""

# httpcore's network interface takes each call's timeout as a parameter:
# ruff: noqa: ASYNC109

from __future__ import annotations

import ssl
import typing

import anyio
import httpcore
import httpx
from httpcore._backends.anyio import AnyIOStream
from httpcore._backends.auto import AutoBackend

from .pool import http11_pool


class LeanReadStream(AnyIOStream):
    """httpcore's anyio stream; a read with no timeout waits on the socket directly."""

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if timeout is not None:
            return await super().read(max_bytes, timeout)
        try:
            return await self._stream.receive(max_bytes=max_bytes)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:  # as httpcore maps them
            raise httpcore.ReadError(exc) from exc

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _lean(await super().start_tls(ssl_context, server_hostname, timeout))


def _lean(stream: httpcore.AsyncNetworkStream) -> LeanReadStream:
    """The same anyio stream, reading as `LeanReadStream` does."""
    assert isinstance(stream, AnyIOStream)
    return LeanReadStream(stream._stream)


class LeanReadBackend(httpcore.AnyIOBackend):
    """httpcore's anyio backend, handing out `LeanReadStream`s."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _lean(await super().connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _lean(await super().connect_unix_socket(path, timeout, socket_options))


def use_lean_reads(transport: httpx.AsyncBaseTransport) -> bool:
    """Give httpx's default transport a `LeanReadBackend` for the connections it makes from now on; False, and
    nothing changed, for anything it was not written for (on HTTP/2 one stream's read is not its own)."""
    pool = http11_pool(transport)
    if pool is None or type(pool._network_backend) is not AutoBackend:
        return False
    pool._network_backend = LeanReadBackend()
    return True


def untimed_body(response: httpx.Response) -> None:
    """The headers have arrived: the body's reads wait without a read timeout from now on (the stream's watcher
    bounds them). httpcore takes the timeout for a body when its reading starts, so this is called before it."""
    timeouts = response.request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        timeouts["read"] = None
