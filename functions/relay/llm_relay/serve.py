"""Production entry point (`run.sh`, under the Lambda Web Adapter): build the settings and the app, then serve it
with uvicorn on 127.0.0.1:$PORT.

A configuration the relay refuses (no `RELAY_UPSTREAM_URL`, invalid settings, an upstream table or price override
that cannot be used) ends the process before it listens: exit status 2 and one line on stderr, no traceback, so the
function's log says what to fix and the adapter's readiness check never passes. `make dev` refuses the same way
(`refusing_to_start`).

Start-up runs with the garbage collector off: imports and the app's construction allocate hundreds of thousands
of objects that live as long as the process, and collecting them on the way costs tens of milliseconds of every
cold start (bench/lambda_profile.py). Once built they are frozen (`gc.freeze`), so later collections, during
streams, do not walk them again. Hence the imports inside the functions: they run after `gc.disable()`.

What may queue between the relay and a reader is bounded, so that at the deadline the terminal frame and the end of
the body get into the connection within the margin kept for them, however small the reader's receive buffer: a
write waits (uvicorn's flow control) while the connection holds more than it may, and the terminal frame is a
write like any other. Two places hold bytes a reader has not taken yet:
- the kernel's send buffer (`SEND_BUFFER_BYTES`; Linux doubles the value it is given). Unbounded, loopback
  autotuning lets ~4 MiB queue, and a blocked writer is woken only once a third of it is free;
- the event loop's write buffer (`WRITE_BUFFER_BYTES`): asyncio pauses writing above 64 KiB and resumes below
  16 KiB, so a waiting write waited for 48 KiB to drain (12 s for a reader at 4 KB/s; the margin is 5 s).
The relay's peer is the web adapter on loopback, which reads as fast as it can: small buffers cost it nothing.
"""

from __future__ import annotations

import gc
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, cast

if TYPE_CHECKING:
    import asyncio

    import uvicorn
    from starlette.applications import Starlette

    from .settings import Settings

HOST = "127.0.0.1"  # the adapter forwards over loopback; nothing else may reach the server
KEEP_ALIVE_S = 60  # idle connections from the adapter stay open a minute
EXIT_CONFIGURATION = 2
SEND_BUFFER_BYTES = 4 * 1024  # the kernel's, per connection (8 KiB once doubled)
WRITE_BUFFER_BYTES = 4 * 1024  # the event loop's, per connection: writing pauses above it, resumes below a quarter


@contextmanager
def refusing_to_start() -> Iterator[None]:
    """Inside it, a configuration the relay refuses (`ConfigurationError`, settings that do not validate) ends the
    process with one line on stderr and exit status 2."""
    from pydantic import ValidationError

    from .errors import ConfigurationError

    try:
        yield
    except ConfigurationError as exc:
        refuse(str(exc))
    except ValidationError as exc:
        refuse("invalid settings: " + "; ".join(str(error["msg"]) for error in exc.errors()))


def build_app(settings: Settings | None = None) -> tuple[Starlette, Settings]:
    """The app and its settings (from the environment when not given), or SystemExit with one line on stderr for a
    configuration the relay refuses."""
    from .app import create_app
    from .settings import Settings

    with refusing_to_start():
        settings = settings or Settings()
        return create_app(settings), settings
    raise AssertionError("unreachable")  # refusing_to_start() exits on what it catches


def refuse(reason: str) -> NoReturn:
    """One line naming what to fix; a traceback would bury it in the function's log."""
    sys.stderr.write(f"llm-relay: refusing to start: {' '.join(reason.split())}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CONFIGURATION)


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound, with the bounded send buffer every accepted connection inherits."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    sock.bind((host, port))
    return sock


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's HTTP protocol, the one `http="auto"` picks (httptools, else h11), with the bounded write buffer.
    uvicorn has no option for it, so each connection's transport is given its limits as the connection is made
    (asyncio's own `set_write_buffer_limits`). Written against uvicorn 0.54 (`uvicorn.protocols.http.auto`, a module
    without a leading underscore but not documented): if it moves, uvicorn's own protocol is used, unbounded
    (tests/unit/test_serve.py fails then, so an upgrade cannot drop the bound unnoticed)."""
    try:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol
    except ImportError:
        return "auto"
    base = AutoHTTPProtocol

    def connection_made(self: asyncio.Protocol, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        # a stream transport (uvloop's are not asyncio.WriteTransport subclasses, but have the same method)
        cast("asyncio.WriteTransport", transport).set_write_buffer_limits(high=WRITE_BUFFER_BYTES)

    return type("BoundedWritesProtocol", (base,), {"connection_made": connection_made})


def main(
    *,
    build: Callable[[], tuple[Any, Settings]] = build_app,
    listen: Callable[[str, int], socket.socket] = listening_socket,
) -> None:
    """`python -m llm_relay.serve`: what run.sh execs. `build` and `listen` are the app's and the socket's makers (a
    test passes its own)."""
    gc.disable()
    app, settings = build()
    server, sock = http_server(app, HOST, settings.port, listen=listen)
    gc.freeze()
    gc.enable()
    server.run(sockets=[sock])


def http_server(
    app: Any,
    host: str,
    port: int,
    *,
    listen: Callable[[str, int], socket.socket] = listening_socket,
    **options: Any,
) -> tuple[uvicorn.Server, socket.socket]:
    """uvicorn on our own listening socket, given as the socket object: uvicorn's `fd=` would wrap it as a Unix
    socket, and the event loop sets TCP_NODELAY only on TCP connections, so every small write (a token) would wait
    for the client's delayed ACK (about 20 ms more to the first token, measured)."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, timeout_keep_alive=KEEP_ALIVE_S, http=http_protocol(), **options
    )
    return uvicorn.Server(config), listen(host, port)


if __name__ == "__main__":
    main()
