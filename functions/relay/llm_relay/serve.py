"""Production entry point (`run.sh`, under the Lambda Web Adapter): build the settings and the app, then serve it
with uvicorn on 127.0.0.1:$PORT, the options `python -m uvicorn` was given before.

A configuration the relay refuses (no `RELAY_UPSTREAM_URL`, invalid settings) ends the process before it listens:
exit status 2 and one line on stderr, no traceback, so the function's log says what to fix and the adapter's
readiness check never passes.

Start-up runs with the garbage collector off: imports and the app's construction allocate hundreds of thousands
of objects that live as long as the process, and collecting them on the way costs tens of milliseconds of every
cold start (bench/lambda_profile.py). Once built they are frozen (`gc.freeze`), so later collections, during
streams, do not walk them again. Hence the imports inside the functions: they run after `gc.disable()`.
"""

from __future__ import annotations

import gc
import socket
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .settings import Settings

HOST = "127.0.0.1"  # the adapter forwards over loopback; nothing else may reach the server
KEEP_ALIVE_S = 60  # as run.sh passed to uvicorn before: idle connections from the adapter stay open a minute
EXIT_CONFIGURATION = 2
# What the kernel may queue for a reader that has not taken it yet (Linux doubles the value it is given). Without a
# bound, loopback autotuning lets ~4 MiB queue behind a slow reader, and a blocked writer is woken only once a third
# of that is free: at the deadline the terminal frame could not get into the pipe within the margin (issue 11).
SEND_BUFFER_BYTES = 64 * 1024


def build_app() -> tuple[Starlette, Settings]:
    """The app and its settings, or SystemExit with one line on stderr for a configuration the relay refuses."""
    from pydantic import ValidationError

    from .app import create_app
    from .errors import ConfigurationError
    from .settings import Settings

    try:
        settings = Settings()
        return create_app(settings), settings
    except ConfigurationError as exc:
        refuse(str(exc))
    except ValidationError as exc:
        refuse("invalid settings: " + "; ".join(str(error["msg"]) for error in exc.errors()))


def refuse(reason: str) -> NoReturn:
    """One line naming what to fix; a traceback would bury it in the function's log."""
    sys.stderr.write(f"llm-relay: refusing to start: {reason}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CONFIGURATION)


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound, with the bounded send buffer every accepted connection inherits."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    sock.bind((host, port))
    return sock


def main() -> None:
    """`python -m llm_relay.serve`: what run.sh execs."""
    gc.disable()
    import uvicorn

    app, settings = build_app()
    sock = listening_socket(HOST, settings.port)
    gc.freeze()
    gc.enable()
    uvicorn.run(
        app,
        fd=sock.fileno(),
        host=HOST,
        port=settings.port,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
    )


if __name__ == "__main__":
    main()
