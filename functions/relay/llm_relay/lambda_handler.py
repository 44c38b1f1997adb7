"""Buffered entry point: the same app behind Mangum, for invocations that are not streamed (API Gateway,
`sam local invoke`, `make invoke`). Handler: `llm_relay.lambda_handler.handler`.

Mangum cannot stream: it collects the whole response body and returns one Lambda response object. Streaming is
the web adapter's job (`run.sh`). NDJSON and SSE bodies are declared text so they come back readable, not base64.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mangum import Mangum
from mangum.adapter import DEFAULT_TEXT_MIME_TYPES

from .app import create_app

TEXT_MIME_TYPES: list[str] = [*DEFAULT_TEXT_MIME_TYPES, "text/event-stream", "application/x-ndjson"]

_adapter: Mangum | None = None


def build_adapter() -> Mangum:
    """The app behind Mangum, built from the environment's settings. The ASGI lifespan (upstream client, cancel
    poller) runs around every invocation, so nothing is left running while Lambda freezes the sandbox.
    Without `RELAY_UPSTREAM_URL` it raises `ConfigurationError`: the invocation fails, naming the variable."""
    app = create_app()
    # Mangum drives the app with `asyncio.get_event_loop()`; give the thread a loop of its own so that call
    # neither warns (Python 3.12) nor fails (3.14+).
    asyncio.set_event_loop(asyncio.new_event_loop())
    return Mangum(app, lifespan="auto", text_mime_types=TEXT_MIME_TYPES)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda handler. The app and its clients are built on the first invocation and reused while the sandbox
    lives, so importing this module has no side effects."""
    global _adapter
    if _adapter is None:
        _adapter = build_adapter()
    response: dict[str, Any] = _adapter(event, context)
    return response
