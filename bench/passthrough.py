"""The benchmark's floor: a bare FastAPI + httpx pass-through of the mock upstream's stream (no auth, no
admission, no parsing, no metering, no finalization), to set the relay's CPU per relayed chunk beside what
FastAPI, uvicorn and httpx alone cost. Never a way to run the relay.

    PORT=8090 UPSTREAM_URL=http://127.0.0.1:8081/v1 python -m bench.passthrough

With `PASSTHROUGH_HOT_PATH=relay` its httpx client gets the two changes the relay makes to httpx's own transport
(`llm_relay.upstreams.pool`'s connection pool, `llm_relay.upstreams.body_reads`' untimed body reads): the same
stack with the relay's fixes and none of its work, the stricter floor.
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

from llm_relay.upstreams.body_reads import untimed_body, use_lean_reads
from llm_relay.upstreams.pool import use_fair_pool

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8081/v1")
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=60, limits=httpx.Limits(max_connections=1000))
RELAY_HOT_PATH = os.environ.get("PASSTHROUGH_HOT_PATH") == "relay"
if RELAY_HOT_PATH and not (use_fair_pool(client._transport) and use_lean_reads(client._transport)):
    raise SystemExit("the relay's hot path is not for this httpx/httpcore")


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
    if RELAY_HOT_PATH:
        untimed_body(upstream)
    return StreamingResponse(
        upstream.aiter_raw(), media_type="text/event-stream", background=BackgroundTask(upstream.aclose)
    )


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
