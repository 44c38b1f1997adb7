"""Telemetry through `make dev`'s own entry point: EMF records with the right reason for each kind of
ending, one structured log line per request, the human line, and no secret anywhere in the output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.integration.devserver_support import DevServer, dev_server
from tests.waiting import wait_until

UPSTREAM_KEY = "sk-upstream-TOPSECRET-4242"
WRONG_KEY = "lr-not-a-real-key-SECRETISH-777"


@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    with dev_server(
        RELAY_UPSTREAM_API_KEY=UPSTREAM_KEY,
        RELAY_UPSTREAM_IDLE_TIMEOUT_S="0.5",
        RELAY_ALLOWED_MODELS="gpt-4o-mini,gpt-4o",
        RELAY_DEV_KEY="lr-dev-telemetry-SECRET-9",
    ) as server:
        yield server


def _chat(dev: DevServer, key: str | None = None, path: str = "/v1/chat/completions", **body: Any) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body}
    headers = {"authorization": f"Bearer {key or dev.key}"}
    return httpx.post(f"{dev.url}{path}", json=payload, headers=headers, timeout=10)


def _streams(dev: DevServer) -> list[dict[str, Any]]:
    return [doc for doc in dev.emf() if "StreamsTerminated" in doc]


def _reason_of(dev: DevServer, request_id: str) -> str:
    return str(dev.wait_finished(request_id)["reason"])


def _rejections(dev: DevServer) -> list[str]:
    return [doc["reason"] for doc in dev.emf() if "RequestsRejected" in doc]


def _cancel_mid_stream(dev: DevServer) -> str:
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
        "mock": {"tokens": 500, "chunk_delay_ms": 10, "ttft_ms": 0},
    }
    with (
        httpx.Client() as client,
        client.stream(
            "POST", f"{dev.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {dev.key}"}
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        next(lines)
        response.close()
    return request_id


def test_each_ending_emits_its_reason(dev: DevServer) -> None:
    before = len(_streams(dev))
    # GIVEN a normal stream, a `length` stream, a cancelled stream, an upstream failure and a rejected request
    normal = _chat(dev, stream=True, mock={"tokens": 3, "chunk_delay_ms": 0}).headers["x-request-id"]
    length = _chat(dev, path="/api/v1/chat/stream", mock={"tokens": 3, "finish_reason": "length"})
    failed = _chat(dev, stream=True, mock={"tokens": 5, "drop_after": 2})
    status_failed = _chat(dev, mock={"status": 503})
    cancelled = _cancel_mid_stream(dev)
    rejected = _chat(dev, key=WRONG_KEY)
    invalid = _chat(dev, model="not-allowed")
    # THEN each finished request has its reason in the log line and in the StreamsTerminated EMF record
    assert _reason_of(dev, normal) == "stop"
    assert _reason_of(dev, length.headers["x-request-id"]) == "length"
    assert _reason_of(dev, failed.headers["x-request-id"]) == "upstream_error"
    assert _reason_of(dev, status_failed.headers["x-request-id"]) == "upstream_error"
    assert _reason_of(dev, cancelled) == "client_cancelled"
    streams = _streams(dev)[before:]  # complete: each request's EMF is out before its [relay] line
    reasons = sorted(doc["reason"] for doc in streams)
    assert reasons == sorted(["stop", "length", "upstream_error", "upstream_error", "client_cancelled"])
    for doc in streams:
        directive = doc["_aws"]["CloudWatchMetrics"][0]
        assert directive["Namespace"] == "LLMRelay"
        assert directive["Dimensions"] == [["reason", "service"]]
        assert doc["service"] == "llm-relay"
    # AND the rejections are counted by reason
    assert rejected.status_code == 401 and invalid.status_code == 403
    wait_until(
        lambda: {"unauthorized", "model_not_allowed"} <= set(_rejections(dev)), "both rejections in the EMF output"
    )
    # AND upstream errors by status class, TTFT per model, cancel latency by channel
    emf = dev.emf()
    assert any(doc.get("status_class") == "5xx" for doc in emf if "UpstreamErrors" in doc)
    assert any(doc.get("model") == "gpt-4o-mini" for doc in emf if "TimeToFirstToken" in doc)
    cancel_docs = [doc for doc in emf if "ClientCancelLatency" in doc]
    assert cancel_docs and cancel_docs[-1]["channel"] == "disconnect"
    # (the metric is in milliseconds, the same figure as the log line's; how small it is, is the benchmark's)
    logged_ms = dev.wait_finished(cancelled)["cancel_latency_ms"]
    assert cancel_docs[-1]["ClientCancelLatency"][0] == pytest.approx(logged_ms, abs=0.01)
    # AND a human line per finished stream
    human = dev.wait_for_output(f"[relay] {cancelled} ")
    assert "client_cancelled" in human and "(est)" in human


def test_summary_log_line_has_the_request_figures(dev: DevServer) -> None:
    response = _chat(dev, stream=True, mock={"tokens": 4, "chunk_delay_ms": 0})
    line = dev.wait_finished(response.headers["x-request-id"])
    assert line["level"] == "INFO" and line["service"] == "llm-relay"
    assert line["key_id"].startswith("rk_")
    assert line["model"] == "gpt-4o-mini" and line["completion_tokens"] == 4
    assert line["usage_source"] == "upstream" and line["ttft_ms"] > 0 and line["duration_ms"] > 0
    assert line["cost_usd"] is not None and line["retries"] == 0


def test_lambda_request_id_is_logged_for_correlation(dev: DevServer) -> None:
    context = json.dumps({"request_id": "lambda-req-123", "deadline": int((time.time() + 60) * 1000)})
    response = httpx.post(
        f"{dev.url}/v1/chat/completions",
        timeout=10,
        headers={"authorization": f"Bearer {dev.key}", "x-amzn-lambda-context": context},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "mock": {"tokens": 1}},
    )
    line = dev.wait_finished(response.headers["x-request-id"])
    assert line["lambda_request_id"] == "lambda-req-123"


def test_no_secret_in_any_output(dev: DevServer) -> None:
    # GIVEN every path: success, cancel, failures, bad input, bad keys, explicit cancel, CLI use
    rejected_before = len(_rejections(dev))
    admitted = [
        _chat(dev, stream=True, mock={"tokens": 2}).headers["x-request-id"],
        _chat(dev, path="/api/v1/chat/stream", mock={"tokens": 2, "malformed_after": 1}).headers["x-request-id"],
        _chat(dev, mock={"status": 401}).headers["x-request-id"],
        _chat(dev, mock={"status": 500}).headers["x-request-id"],
        _cancel_mid_stream(dev),
    ]
    rejected = [
        httpx.post(
            f"{dev.url}/v1/chat/completions", content=b"{bad json", headers={"authorization": f"Bearer {dev.key}"}
        ),
        httpx.post(f"{dev.url}/v1/chat/completions", json={}, headers={"authorization": f"Bearer {WRONG_KEY}"}),
        httpx.post(f"{dev.url}/v1/chat/completions", json={}, headers={"x-api-key": WRONG_KEY}),
        httpx.post(f"{dev.url}/v1/chat/completions", json={}, headers={"authorization": f"Basic {WRONG_KEY}"}),
        httpx.post(f"{dev.url}/v1/requests/req_x/cancel", headers={"authorization": f"Bearer {WRONG_KEY}"}),
    ]
    cli = subprocess.run(
        [sys.executable, "-m", "llm_relay.cli", "usage", "--json"],
        capture_output=True,
        text=True,
        env={**dev.env, "RELAY_DYNAMODB_ENDPOINT": dev.moto_url},
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    # (every request's output is out: each admitted one's finalization, each rejection's log line and metric)
    for request_id in admitted:
        dev.wait_finished(request_id)
    wait_until(lambda: len(_rejections(dev)) >= rejected_before + len(rejected), "every rejection's metric")
    # THEN no key, upstream key or Authorization value appears in any log line, metric or error output
    banner = {i for i, line in enumerate(dev.stdout) if "dev key" in line or "Authorization: Bearer" in line}
    output = [line for i, line in enumerate(dev.stdout) if i not in banner] + dev.stderr + [cli.stdout, cli.stderr]
    text = "\n".join(output)
    assert len(dev.logs()) > 10 and len(dev.emf()) > 10
    for secret in (dev.key, UPSTREAM_KEY, WRONG_KEY, "Bearer "):
        assert secret not in text, f"{secret!r} leaked into the output"


def test_openai_sdk_and_curl_work_against_make_dev(dev: DevServer, closing: ExitStack) -> None:
    import openai

    # GIVEN `make dev`'s relay and the key it printed
    client = closing.enter_context(openai.OpenAI(base_url=f"{dev.url}/v1", api_key=dev.key, max_retries=0))
    # WHEN the official SDK streams, and curl asks for NDJSON
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        extra_body={"mock": {"tokens": 4, "chunk_delay_ms": 1}},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    curl = subprocess.run(
        [
            "curl",
            "-sN",
            f"{dev.url}/api/v1/chat/stream",
            "-H",
            f"Authorization: Bearer {dev.key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"mock":{"tokens":3}}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # THEN both get the answer, NDJSON ending with its summary
    assert text == "The quick brown fox"
    lines = [json.loads(line) for line in curl.stdout.splitlines() if line.strip()]
    assert lines[-1]["object"] == "relay.summary" and lines[-1]["usage"]["completion_tokens"] == 3
