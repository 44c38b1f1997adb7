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
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .settings import Settings

HOST = "127.0.0.1"  # the adapter forwards over loopback; nothing else may reach the server
KEEP_ALIVE_S = 60  # as run.sh passed to uvicorn before: idle connections from the adapter stay open a minute
EXIT_CONFIGURATION = 2


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


def main() -> None:
    """`python -m llm_relay.serve`: what run.sh execs."""
    gc.disable()
    import uvicorn

    app, settings = build_app()
    gc.freeze()
    gc.enable()
    uvicorn.run(app, host=HOST, port=settings.port, access_log=False, timeout_keep_alive=KEEP_ALIVE_S)


if __name__ == "__main__":
    main()
