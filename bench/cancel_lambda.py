"""Cancel latency the way Lambda behaves: through the local function-URL front (llm_relay_dev.function_url), which
does not pass a client's disconnect on, so only the explicit cancel stops the upstream.

    .venv/bin/python -m bench.cancel_lambda [--trials 20]

One relay environment streams, a second takes the cancel calls (as another Lambda instance would), both at the
default poll interval (RELAY_CANCEL_POLL_INTERVAL_S, 0.2 s); DynamoDB is the local moto. Two cases, each `--trials`
times: a client that read one chunk, left, and cancelled with its own X-Client-Request-Id; and a cancel sent while
the upstream still holds its response headers (3 s). Measured: the cancel call's start to the mock upstream seeing
its request closed. Budget: p99 < 400 ms. Writes bench/results/cancel_lambda.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from llm_relay.app import create_app
from llm_relay.dynamo import Stores
from llm_relay.settings import Settings
from llm_relay_dev.dev_key import ensure_dev_key
from llm_relay_dev.function_url import FrontLimits, FunctionUrlFront
from llm_relay_dev.local_dynamodb import MotoServer
from llm_relay_dev.mock_upstream import MockState, create_mock_app
from llm_relay_dev.serving import serve_in_thread
from llm_relay_dev.table import create_table

BUDGET_MS = 400.0
RESULTS = Path(__file__).resolve().parent / "results" / "cancel_lambda.json"
BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}], "stream": True}


def _wait(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.001)
    return value


def _closed_after(mock: MockState, seen: int, sent_at: float) -> float:
    request_id = mock.headers[seen]["x-request-id"]
    record = mock.requests[request_id]
    return float(_wait(lambda: record.disconnected_at)) - sent_at


def _cancel(front: str, key: str, client_id: str) -> float:
    sent_at = time.monotonic()
    response = httpx.post(f"{front}/v1/requests/{client_id}/cancel", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text
    return sent_at


def leave_then_cancel(front: str, key: str, mock: MockState) -> float:
    client_id, seen = str(uuid.uuid4()), len(mock.headers)
    headers = {"authorization": f"Bearer {key}", "x-client-request-id": client_id}
    body = {**BODY, "mock": {"tokens": 2000, "chunk_delay_ms": 10, "ttft_ms": 0}}
    with httpx.stream("POST", f"{front}/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
        next(line for line in response.iter_lines() if line.startswith("data: {"))
    return _closed_after(mock, seen, _cancel(front, key, client_id))


def cancel_held_headers(front: str, key: str, mock: MockState) -> float:
    client_id, seen = str(uuid.uuid4()), len(mock.headers)
    headers = {"authorization": f"Bearer {key}", "x-client-request-id": client_id}
    body = {**BODY, "mock": {"headers_delay_ms": 3000, "tokens": 5}}
    call = threading.Thread(
        target=httpx.post, args=(f"{front}/v1/chat/completions",), kwargs={"json": body, "headers": headers}
    )
    call.start()
    _wait(lambda: len(mock.headers) > seen)
    latency = _closed_after(mock, seen, _cancel(front, key, client_id))
    call.join(30)
    return latency


def summary(latencies: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return {"p50_ms": round(statistics.median(ms), 1), "p99_ms": round(p99, 1), "max_ms": round(ms[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    trials = parser.parse_args().trials
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    with ExitStack() as stack:
        endpoint = stack.enter_context(MotoServer())
        mock_app = create_mock_app()
        upstream = stack.enter_context(serve_in_thread(mock_app))
        settings = Settings(upstream_url=f"{upstream}/v1", dynamodb_endpoint=endpoint, table_name="bench-cancel")
        stores = Stores.from_settings(settings)
        create_table(stores.client, settings.table_name)
        key, _ = ensure_dev_key(stores.keys)
        front = FunctionUrlFront(
            lambda: serve_in_thread(create_app(settings, stores=stores), lifespan="on"), FrontLimits(max_environments=2)
        )
        url = stack.enter_context(serve_in_thread(front, lifespan="on"))
        leave_then_cancel(url, key, mock_app.state.mock)  # warm-up: both environments started
        results = {
            "poll_interval_s": settings.cancel_poll_interval_s,
            "trials": trials,
            "budget_p99_ms": BUDGET_MS,
            "leave_then_cancel": summary([leave_then_cancel(url, key, mock_app.state.mock) for _ in range(trials)]),
            "cancel_held_headers": summary([cancel_held_headers(url, key, mock_app.state.mock) for _ in range(trials)]),
        }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
