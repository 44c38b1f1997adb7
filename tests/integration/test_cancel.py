"""Cancellation, both channels of DESIGN "Cancellation on Lambda": the client's disconnect, and the explicit
cancel call, taken by another relay instance and sent from another process. Either way the upstream
request is closed at once, the reason is client_cancelled and finalization still runs."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

from llm_relay_dev.dev_key import ensure_dev_key
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.helpers import RecordingFinalizer, chat_body


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/stream"])
def test_client_disconnect_closes_upstream_within_50ms(make_relay: RelayFactory, upstream: Upstream, path: str) -> None:
    # GIVEN a long stream (1000 tokens, 20 ms apart) that the client has started reading
    recorder = RecordingFinalizer()
    relay = make_relay(app_kwargs={"finalizers": [recorder]})
    body = chat_body(stream=True, mock={"tokens": 1000, "chunk_delay_ms": 20, "ttft_ms": 0})
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{relay.url}{path}", json=body, headers=relay.headers()) as response,
    ):
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = 0
        while received < 3:
            if next(lines).startswith(("data: {", "{")):
                received += 1
        # WHEN the client drops the connection
        closed_at = time.monotonic()
        response.close()
    # THEN the upstream sees its request closed within 50 ms
    record = upstream.state.requests[request_id]
    _wait_for(lambda: record.disconnected_at is not None)
    assert record.disconnected_at is not None
    latency = record.disconnected_at - closed_at
    assert latency < 0.050, f"upstream saw the close {latency * 1000:.1f} ms after the client left"
    assert not record.completed and record.chunks_sent < 100
    # AND the stream was finalized as client_cancelled, with estimated usage
    outcome = recorder.wait(request_id)
    assert outcome.reason.value == "client_cancelled"
    assert outcome.cancel_source == "disconnect"
    assert outcome.usage.estimated and outcome.usage.completion_tokens >= 2  # role chunk + 2 tokens read
    assert outcome.cancel_latency_s is not None and outcome.cancel_latency_s < 0.050


def test_cancel_call_from_another_process_via_another_instance(make_relay: RelayFactory, upstream: Upstream) -> None:
    # GIVEN two relay instances sharing one table (two Lambda instances), a stream running on the first
    recorder = RecordingFinalizer()
    streaming = make_relay(app_kwargs={"finalizers": [recorder]}, cancel_poll_interval_s=0.2)
    other = make_relay()
    body = chat_body(stream=True, mock={"tokens": 1000, "chunk_delay_ms": 20, "ttft_ms": 0})
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", f"{streaming.url}/v1/chat/completions", json=body, headers=streaming.headers()
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        # WHEN another process (curl) asks the OTHER instance to cancel it
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                f"{other.url}/v1/requests/{request_id}/cancel",
                "-H",
                f"Authorization: Bearer {other.key}",
                "-w",
                "\n%{http_code}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        cancelled_at = time.monotonic()
        answer, status = result.stdout.rsplit("\n", 1)
        assert status == "202"
        assert json.loads(answer) == {"id": request_id, "object": "relay.cancel", "status": "cancelling"}
        # THEN the stream ends cleanly for the client that is still connected
        rest = list(lines)
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    record = upstream.state.requests[request_id]
    _wait_for(lambda: record.disconnected_at is not None)
    assert record.disconnected_at is not None
    # AND the upstream was closed within one poll interval (plus the curl process start-up margin)
    assert record.disconnected_at - cancelled_at < 0.2 + 0.1
    outcome = recorder.wait(request_id)
    assert outcome.reason.value == "client_cancelled" and outcome.cancel_source == "cancel_call"


def test_cancel_on_the_same_instance_is_immediate(relay: Relay, upstream: Upstream) -> None:
    body = chat_body(stream=True, mock={"tokens": 1000, "chunk_delay_ms": 20, "ttft_ms": 0})
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{relay.url}/api/v1/chat/stream", json=body, headers=relay.headers()) as response,
    ):
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        next(lines)
        answer = httpx.post(f"{relay.url}/v1/requests/{request_id}/cancel", headers=relay.headers())
        cancelled_at = time.monotonic()
        assert answer.status_code == 202
        summary = json.loads([line for line in lines if line.strip()][-1])
    assert summary["object"] == "relay.summary"
    assert summary["termination_reason"] == "client_cancelled"
    assert summary["usage"]["estimated"] is True
    record = upstream.state.requests[request_id]
    assert record.disconnected_at is not None and record.disconnected_at - cancelled_at < 0.05


def test_cancel_unknown_or_foreign_request_is_404(relay: Relay) -> None:
    # GIVEN a finished request of the dev key, and a second key
    done = httpx.post(f"{relay.url}/v1/chat/completions", json=chat_body(mock={"tokens": 1}), headers=relay.headers())
    request_id = done.headers["x-request-id"]
    other_plain, _ = ensure_dev_key(relay.stores.keys, "lr-someone-else", name="other")
    # WHEN the other key tries to cancel it, or anyone cancels an unknown id
    foreign = httpx.post(f"{relay.url}/v1/requests/{request_id}/cancel", headers=relay.headers(other_plain))
    unknown = httpx.post(f"{relay.url}/v1/requests/req_nope/cancel", headers=relay.headers())
    own = httpx.post(f"{relay.url}/v1/requests/{request_id}/cancel", headers=relay.headers())
    # THEN 404 with an OpenAI-style error for both; the owner learns it already finished
    for response in (foreign, unknown):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert own.status_code == 202 and own.json()["status"] == "finished"
    # AND without a key it is 401
    assert httpx.post(f"{relay.url}/v1/requests/{request_id}/cancel").status_code == 401
