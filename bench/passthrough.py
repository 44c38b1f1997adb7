"""The benchmark's floor: a bare FastAPI + httpx pass-through of the mock upstream's stream (no auth, no
admission, no parsing, no metering, no finalization), to set the relay's CPU per relayed chunk beside what
FastAPI, uvicorn and httpx alone cost. Never a way to run the relay.

    PORT=8090 UPSTREAM_URL=http://127.0.0.1:8081/v1 python -m bench.passthrough
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8081/v1")
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=60, limits=httpx.Limits(max_connections=1000))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await client.aclose()


app = FastAPI(lifespan=lifespan, openapi_url=None)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> StreamingResponse:
    upstream = await client.send(
        client.build_request("POST", "/chat/completions", content=await request.body()), stream=True
    )
    return StreamingResponse(
        upstream.aiter_raw(), media_type="text/event-stream", background=BackgroundTask(upstream.aclose)
    )


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
