"""The baseline of `make bench-lambda`: a bare uvicorn + Starlette "hello" app, run from the same layer and
under the same conditions as the relay (compiled by CPython 3.12, bytecode writing off, same CPU quota).
Copied next to a compiled copy by bench/lambda_profile.py: `python -m bare_app` with PORT set."""

from __future__ import annotations

import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/healthz", healthz)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), access_log=False, timeout_keep_alive=60)
