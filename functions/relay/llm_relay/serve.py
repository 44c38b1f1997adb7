"""Production entry point (`run.sh`, under the Lambda Web Adapter): build the settings and the app, then serve it
with uvicorn on 127.0.0.1:$PORT, the options `python -m uvicorn` was given before.

A configuration the relay refuses (no `RELAY_UPSTREAM_URL`, invalid settings) ends the process before it listens:
exit status 2 and one line on stderr, no traceback, so the function's log says what to fix and the adapter's
readiness check never passes.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette

from .app import create_app
from .errors import ConfigurationError
from .settings import Settings

HOST = "127.0.0.1"  # the adapter forwards over loopback; nothing else may reach the server
KEEP_ALIVE_S = 60  # as run.sh passed to uvicorn before: idle connections from the adapter stay open a minute
EXIT_CONFIGURATION = 2


def build_app() -> tuple[Starlette, Settings]:
    """The app and its settings, or SystemExit with one line on stderr for a configuration the relay refuses."""
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


def main() -> None:
    """`python -m llm_relay.serve`: what run.sh execs."""
    app, settings = build_app()
    uvicorn.run(app, host=HOST, port=settings.port, access_log=False, timeout_keep_alive=KEEP_ALIVE_S)


if __name__ == "__main__":
    main()
