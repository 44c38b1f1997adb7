"""Cancellation, both channels (docs/design.md, "Cancellation on Lambda"): the client's disconnect, and the explicit
cancel call, taken by another relay instance and sent from another process. Either way the upstream
request is closed at once, the reason is client_cancelled and finalization still runs."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from llm_relay_dev.dev_key import ensure_dev_key
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.helpers import RecordingFinalizer, chat_body
from tests.waiting import wait_until

#: Latency bounds of the `slow` tests: generous enough for a loaded 2-core machine. The budgets themselves
#: (50 ms from the client leaving to the upstream seeing it) are measured by the benchmark (`make bench`).
LOADED_MACHINE_SLACK_S = 1.0
LONG_STREAM = {"tokens": 1000, "chunk_delay_ms": 20, "ttft_ms": 0}  # 20 s: it never ends by itself in a test


def _upstream_closed(upstream: Upstream, request_id: str) -> float:
    """When (monotonic) the mock upstream saw the relay close the request, once it has."""
    record = upstream.state.requests[request_id]
    return wait_until(lambda: record.disconnected_at, f"upstream request {request_id} closed")


def _drop_after_three_chunks(relay: Relay, path: str) -> tuple[str, float]:
    """Stream a long answer, read 3 chunks, drop the connection: the request id and when it was dropped."""
    body = chat_body(stream=True, mock=LONG_STREAM)
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
        closed_at = time.monotonic()
        response.close()
    return request_id, closed_at


def _cancel_with_curl(instance: Relay, request_id: str) -> float:
    """POST the cancel call from another process (curl) to `instance`; when it answered."""
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{instance.url}/v1/requests/{request_id}/cancel",
            "-H",
            f"Authorization: Bearer {instance.key}",
            "-w",
            "\n%{http_code}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    cancelled_at = time.monotonic()
    answer, status = result.stdout.rsplit("\n", 1)
    assert status == "202"
    assert json.loads(answer) == {"id": request_id, "object": "relay.cancel", "status": "cancelling"}
    return cancelled_at


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/stream"])
def test_client_disconnect_closes_upstream_and_finalizes_as_cancelled(
    make_relay: RelayFactory, upstream: Upstream, path: str
) -> None:
    # GIVEN a long stream (1000 tokens, 20 ms apart) that the client has started reading
    recorder = RecordingFinalizer()
    relay = make_relay(app_kwargs={"finalizers": [recorder]})
    # WHEN the client drops the connection after 3 chunks
    request_id, _ = _drop_after_three_chunks(relay, path)
    # THEN the upstream sees its request closed, long before the answer would have ended
    _upstream_closed(upstream, request_id)
    assert not upstream.state.requests[request_id].completed
    # AND the stream was finalized as client_cancelled, with estimated usage and a measured cancel latency
    outcome = recorder.wait(request_id)
    assert outcome.reason.value == "client_cancelled"
    assert outcome.cancel_source == "disconnect"
    assert outcome.usage.estimated and outcome.usage.completion_tokens >= 2  # role chunk + 2 tokens read
    assert outcome.cancel_latency_s is not None and outcome.cancel_latency_s >= 0


def test_cancel_call_from_another_process_via_another_instance(make_relay: RelayFactory, upstream: Upstream) -> None:
    # GIVEN two relay instances sharing one table (two Lambda instances), a stream running on the first
    recorder = RecordingFinalizer()
    streaming = make_relay(app_kwargs={"finalizers": [recorder]}, cancel_poll_interval_s=0.2)
    other = make_relay()
    body = chat_body(stream=True, mock=LONG_STREAM)
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
        _cancel_with_curl(other, request_id)
        # THEN the stream ends cleanly for the client that is still connected
        rest = list(lines)
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    # AND the upstream request was closed (long before its answer would have ended)
    _upstream_closed(upstream, request_id)
    assert not upstream.state.requests[request_id].completed
    outcome = recorder.wait(request_id)
    assert outcome.reason.value == "client_cancelled" and outcome.cancel_source == "cancel_call"


def test_cancel_on_the_same_instance_ends_the_stream(relay: Relay, upstream: Upstream) -> None:
    body = chat_body(stream=True, mock=LONG_STREAM)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{relay.url}/api/v1/chat/stream", json=body, headers=relay.headers()) as response,
    ):
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        next(lines)
        answer = httpx.post(f"{relay.url}/v1/requests/{request_id}/cancel", headers=relay.headers())
        assert answer.status_code == 202
        summary = json.loads([line for line in lines if line.strip()][-1])
    assert summary["object"] == "relay.summary"
    assert summary["termination_reason"] == "client_cancelled"
    assert summary["usage"]["estimated"] is True
    _upstream_closed(upstream, request_id)
    assert not upstream.state.requests[request_id].completed


# --- latency, with bounds that hold on a loaded machine (the 50 ms budget is the benchmark's) ----------------------
@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/stream"])
def test_client_disconnect_reaches_the_upstream_promptly(
    make_relay: RelayFactory, upstream: Upstream, path: str
) -> None:
    recorder = RecordingFinalizer()
    relay = make_relay(app_kwargs={"finalizers": [recorder]})
    request_id, closed_at = _drop_after_three_chunks(relay, path)
    latency = _upstream_closed(upstream, request_id) - closed_at
    assert latency < LOADED_MACHINE_SLACK_S, f"upstream saw the close {latency * 1000:.1f} ms after the client left"
    assert upstream.state.requests[request_id].chunks_sent < 3 + LOADED_MACHINE_SLACK_S / 0.020
    cancel_latency = recorder.wait(request_id).cancel_latency_s
    assert cancel_latency is not None and cancel_latency < LOADED_MACHINE_SLACK_S


@pytest.mark.slow
def test_cancel_calls_reach_the_upstream_promptly(make_relay: RelayFactory, upstream: Upstream) -> None:
    # GIVEN two instances; the streaming one polls for cancel marks every 0.2 s
    streaming = make_relay(cancel_poll_interval_s=0.2)
    other = make_relay()
    body = chat_body(stream=True, mock=LONG_STREAM)
    with httpx.Client(timeout=10) as client:
        for instance, bound in ((streaming, 0.0), (other, streaming.settings.cancel_poll_interval_s)):
            with client.stream(
                "POST", f"{streaming.url}/v1/chat/completions", json=body, headers=streaming.headers()
            ) as response:
                request_id = response.headers["x-request-id"]
                lines = response.iter_lines()  # (kept: a dropped iterator closes the connection)
                next(lines)
                # WHEN the cancel call goes to the same instance (immediate) or the other (next poll)
                cancelled_at = _cancel_with_curl(instance, request_id)
                # THEN the upstream is closed within that, give or take a loaded machine
                latency = _upstream_closed(upstream, request_id) - cancelled_at
                assert latency < bound + LOADED_MACHINE_SLACK_S, (instance.url, latency)
                assert "data: [DONE]" in list(lines)[-2:]


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
