"""The floor of `make bench-lambda`: the relay's required stack and nothing else. A FastAPI app with a boto3
DynamoDB client, an httpx client and Powertools' Logger and Metrics, built at start-up as any app on this stack
builds them, and one route; served by uvicorn as the relay's entry point serves it. What the relay takes to start
beyond this app is the relay's own; below it nothing on the required stack can go.
Copied next to a compiled copy by bench/lambda_profile.py: `python -m floor_app` with PORT set (and
RELAY_DYNAMODB_ENDPOINT, as the relay gets it)."""

from __future__ import annotations

import os

import boto3
import httpx
import uvicorn
from aws_lambda_powertools import Logger, Metrics
from fastapi import FastAPI
from fastapi.responses import JSONResponse

logger = Logger(service="floor")
metrics = Metrics(namespace="Floor", service="floor")
dynamodb = boto3.client(
    "dynamodb", region_name=os.environ["AWS_REGION"], endpoint_url=os.environ.get("RELAY_DYNAMODB_ENDPOINT")
)
upstream = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


# A Response return type: FastAPI builds no response model for it (a `dict` annotation would import pydantic's
# v1 layer at start-up, which the relay does not pay either).
@app.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), access_log=False, timeout_keep_alive=60)
