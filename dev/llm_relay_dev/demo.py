"""`make dev`'s demo page at `/`, and CORS for local origins: dev only, mounted on the app by the dev server,
never part of the function's artifact (whose URL allows only the origins the deployer names).

The page streams through the browser client (`clients/browser/llm-relay-client.js`, served beside it), renders the
answer as markdown as it arrives (`clients/browser/renderer.js` with the vendored markdown-it + DOMPurify bundle),
stops with the client's cancel (abort plus the cancel call), and shows the summary."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse

PAGE = Path(__file__).with_name("demo.html")
CLIENT = Path(__file__).resolve().parents[2] / "clients" / "browser" / "llm-relay-client.js"
# markdown-it + DOMPurify for the page's renderer, built by clients/browser/scripts/build-vendor.mjs and committed.
MARKDOWN_BUNDLE = Path(__file__).with_name("vendor") / "markdown.bundle.js"
# Any page served from this machine, on any port: http(s)://localhost, 127.0.0.1 or [::1].
LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?"
REQUEST_HEADERS = ["authorization", "content-type", "x-api-key", "x-client-request-id"]
EXPOSED_HEADERS = ["x-request-id", "x-relay-cost-usd", "retry-after", "retry-after-ms", "server-timing"]


def install_demo(app: FastAPI, dev_key: str, extra_body: dict[str, Any] | None = None) -> None:
    """Serve the page (the dev key and `extra_body` filled in) at `/` and the client beside it; answer CORS
    for local origins, preflights included."""
    page = (
        PAGE.read_text(encoding="utf-8")
        .replace("__RELAY_KEY__", html.escape(dev_key, quote=True))
        .replace("__EXTRA_BODY__", html.escape(json.dumps(extra_body) if extra_body else "", quote=True))
    )

    @app.get("/", include_in_schema=False)
    async def demo_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/{module}.js", include_in_schema=False)
    async def browser_client(module: str) -> FileResponse:
        # The client package's ES modules (the client imports its parser; the decoding worker is a module too).
        path = CLIENT.with_name(f"{module}.js")
        if path.parent != CLIENT.parent or not path.is_file():
            raise HTTPException(status_code=404)
        return FileResponse(path, media_type="text/javascript")

    @app.get("/vendor/markdown.bundle.js", include_in_schema=False)
    async def markdown_bundle() -> FileResponse:
        return FileResponse(MARKDOWN_BUNDLE, media_type="text/javascript")

    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=LOCAL_ORIGINS,
        allow_methods=["GET", "POST"],
        allow_headers=REQUEST_HEADERS,
        expose_headers=EXPOSED_HEADERS
        + [f"x-ratelimit-{w}-{k}" for w in ("limit", "remaining", "reset") for k in ("requests", "tokens")],
    )
