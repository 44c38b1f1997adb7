"""Upstream failures: retried only before the first byte; after it, a terminal error object, never a silent
truncation; exactly one termination reason each."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from llm_relay.limits import Ticket
from llm_relay.limits.extend import BudgetGuard
from llm_relay.outcome import RequestContext, StreamOutcome
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.helpers import RecordingFinalizer, chat_body, ndjson_lines, sse_events
from tests.waiting import wait_until


@pytest.fixture
def recorder() -> RecordingFinalizer:
    return RecordingFinalizer()


@pytest.fixture
def rec_relay(make_relay: RelayFactory, recorder: RecordingFinalizer) -> Relay:
    return make_relay(app_kwargs={"finalizers": [recorder]}, upstream_idle_timeout_s=0.5)


def _post(relay: Relay, body: dict[str, Any], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{relay.url}{path}", json=body, headers=relay.headers(), timeout=10)


def test_transient_upstream_failures_are_retried_before_first_byte(
    rec_relay: Relay, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    # GIVEN an upstream that answers 503 twice, then streams
    body = chat_body(stream=True, mock={"fail_first": 2, "id": "retry-1", "tokens": 2})
    # WHEN a client streams through the relay (2 retries allowed)
    response = _post(rec_relay, body)
    # THEN the client sees one clean stream, and the relay counted two retries
    assert response.status_code == 200
    assert sse_events(response.text)[-1] == "[DONE]"
    assert upstream.state.attempts["retry-1"] == 3
    outcome = recorder.done[response.headers["x-request-id"]]
    assert outcome.retries == 2 and outcome.upstream_errors == {"5xx": 2}


def test_persistent_upstream_5xx_becomes_502_after_retries(
    rec_relay: Relay, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    response = _post(rec_relay, chat_body(stream=True, mock={"status": 500}))
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error" and "500" in error["message"]
    outcome = recorder.wait(response.headers["x-request-id"])
    assert outcome.reason.value == "upstream_error"
    assert len(upstream.state.bodies) == 3  # first try + 2 retries


def test_upstream_client_error_is_passed_on_without_retry(rec_relay: Relay, upstream: Upstream) -> None:
    response = _post(rec_relay, chat_body(stream=True, mock={"status": 400}))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_invalid_request"
    assert len(upstream.state.bodies) == 1


@pytest.mark.parametrize(
    ("mock", "reason"),
    [
        ({"drop_after": 3}, "upstream_error"),
        ({"malformed_after": 3}, "upstream_error"),
        ({"error_after": 3}, "upstream_error"),
        ({"stall_after": 3}, "upstream_timeout"),
        ({"no_finish": True}, "incomplete"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/stream"])
def test_failure_after_first_byte_ends_with_terminal_error(
    rec_relay: Relay, recorder: RecordingFinalizer, mock: dict[str, Any], reason: str, path: str
) -> None:
    # GIVEN an upstream that fails after 3 tokens
    body = chat_body(stream=True, mock={"tokens": 6, "chunk_delay_ms": 0, "ttft_ms": 0, **mock})
    # WHEN the client streams
    response = _post(rec_relay, body, path)
    # THEN it got the tokens produced so far, then a terminal error object naming the reason, and no normal end
    assert response.status_code == 200
    if path.endswith("completions"):
        events = sse_events(response.text)
        assert "[DONE]" not in events
        last = json.loads(events[-1])
    else:
        lines = ndjson_lines(response.text)
        assert not any(line.get("object") == "relay.summary" for line in lines)
        last = lines[-1]
    assert last["error"]["code"] == reason
    assert last["error"]["request_id"] == response.headers["x-request-id"]
    outcome = recorder.wait(response.headers["x-request-id"])
    assert outcome.reason.value == reason
    if reason != "incomplete":
        assert outcome.usage.estimated


def test_openai_sdk_raises_on_mid_stream_failure(rec_relay: Relay, closing: ExitStack) -> None:
    import openai

    client = closing.enter_context(openai.OpenAI(base_url=f"{rec_relay.url}/v1", api_key=rec_relay.key, max_retries=0))
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_body={"mock": {"tokens": 5, "drop_after": 2}},
    )
    with pytest.raises(openai.APIError, match="Upstream stream failed"):
        for _ in stream:
            pass


def test_non_streamed_request_failing_mid_way_is_502(rec_relay: Relay) -> None:
    response = _post(rec_relay, chat_body(mock={"tokens": 6, "drop_after": 2}))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


def test_heartbeats_while_waiting_then_first_token_timeout(
    make_relay: RelayFactory, recorder: RecordingFinalizer
) -> None:
    # GIVEN a model that takes 5 s to its first token, a 1.5 s first-token timeout and 0.1 s heartbeats (room
    # for 15: a loaded machine that delays some still sends the 3 asked for)
    relay = make_relay(
        app_kwargs={"finalizers": [recorder]}, upstream_first_token_timeout_s=1.5, heartbeat_interval_s=0.1
    )
    body = chat_body(stream=True, mock={"ttft_ms": 5000})
    # WHEN a client streams over SSE
    response = _post(relay, body)
    # THEN it saw `: ping` comments while waiting, then an upstream_timeout error
    assert response.text.count(": ping\n\n") >= 3
    assert json.loads(sse_events(response.text)[-1])["error"]["code"] == "upstream_timeout"
    assert recorder.wait(response.headers["x-request-id"]).reason.value == "upstream_timeout"


def test_ndjson_heartbeats_are_blank_lines(make_relay: RelayFactory) -> None:
    relay = make_relay(heartbeat_interval_s=0.05)  # 12 heartbeats' time before the first token; 2 are asked for
    response = _post(relay, chat_body(mock={"ttft_ms": 600, "tokens": 1}), "/api/v1/chat/stream")
    assert response.text.startswith("\n\n")
    assert ndjson_lines(response.text)[-1]["object"] == "relay.summary"


def test_deadline_ends_the_stream_cleanly_before_lambda_would(
    make_relay: RelayFactory, recorder: RecordingFinalizer
) -> None:
    # GIVEN a function timeout of 2 s with a 1 s margin, and a stream that would take 10 s
    relay = make_relay(app_kwargs={"finalizers": [recorder]}, function_timeout_s=2.0, deadline_margin_s=1.0)
    body = chat_body(stream=True, mock={"tokens": 100, "chunk_delay_ms": 100, "ttft_ms": 0})
    response = _post(relay, body)
    # THEN the relay ended it itself, with a terminal error, and finalized it as `deadline`
    assert json.loads(sse_events(response.text)[-1])["error"]["code"] == "deadline"
    outcome = recorder.wait(response.headers["x-request-id"])
    assert outcome.reason.value == "deadline"
    # AND not before the margin began, and before Lambda would have cut it off at the function timeout
    assert 0.9 < outcome.duration_s < 2.0


def test_lambda_context_header_sets_the_deadline(make_relay: RelayFactory, recorder: RecordingFinalizer) -> None:
    import time

    # GIVEN Lambda's deadline 2 s away (the function timeout is 900 s) and a 1 s margin
    relay = make_relay(app_kwargs={"finalizers": [recorder]}, deadline_margin_s=1.0)
    context = json.dumps({"request_id": "lambda-1", "deadline": int((time.time() + 2.0) * 1000)})
    response = httpx.post(
        f"{relay.url}/v1/chat/completions",
        headers={**relay.headers(), "x-amzn-lambda-context": context},
        json=chat_body(stream=True, mock={"tokens": 100, "chunk_delay_ms": 50, "ttft_ms": 0}),
    )
    # THEN the 5 s stream ends as `deadline`, before Lambda's deadline
    assert json.loads(sse_events(response.text)[-1])["error"]["code"] == "deadline"
    assert recorder.wait(response.headers["x-request-id"]).duration_s < 2.0


def test_unexpected_failure_opening_the_upstream_is_502_and_still_finalized(
    make_relay: RelayFactory, recorder: RecordingFinalizer
) -> None:
    # GIVEN an upstream client that fails in a way httpx does not name (a bug, a broken transport)
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("transport exploded")

    relay = make_relay(app_kwargs={"finalizers": [recorder], "upstream_transport": httpx.MockTransport(explode)})
    # WHEN a client streams
    response = _post(relay, chat_body(stream=True))
    # THEN it gets a 502 in OpenAI shape, and the admitted request was finalized (no slot or record lost)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert recorder.wait(response.headers["x-request-id"]).reason.value == "upstream_error"


def test_finish_reason_error_is_not_passed_off_as_a_normal_end(rec_relay: Relay, recorder: RecordingFinalizer) -> None:
    response = _post(rec_relay, chat_body(stream=True, mock={"tokens": 2, "finish_reason": "error"}))
    events = sse_events(response.text)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_error" and "finish_reason 'error'" in error["message"]
    assert recorder.wait(response.headers["x-request-id"]).reason.value == "upstream_error"


def test_compressed_upstream_is_not_requested(rec_relay: Relay, upstream: Upstream) -> None:
    # The relay parses raw bytes as they arrive: it must ask the upstream not to compress them.
    _post(rec_relay, chat_body(stream=True, mock={"tokens": 1}))
    assert upstream.state.headers[-1]["accept-encoding"] == "identity"


def test_lambda_context_header_cannot_extend_the_deadline(
    make_relay: RelayFactory, recorder: RecordingFinalizer
) -> None:
    import time

    # GIVEN a client-sent context claiming 1000 s left, on a function whose timeout is 2 s
    relay = make_relay(app_kwargs={"finalizers": [recorder]}, function_timeout_s=2.0, deadline_margin_s=1.0)
    for deadline in (int((time.time() + 1000) * 1000), "NaN"):
        context = json.dumps({"deadline": deadline})
        response = httpx.post(
            f"{relay.url}/v1/chat/completions",
            headers={**relay.headers(), "x-amzn-lambda-context": context},
            json=chat_body(stream=True, mock={"tokens": 100, "chunk_delay_ms": 50, "ttft_ms": 0}),
        )
        # THEN the configured timeout still ends the 5 s stream, before the function timeout
        assert json.loads(sse_events(response.text)[-1])["error"]["code"] == "deadline"
        assert recorder.wait(response.headers["x-request-id"]).duration_s < 2.0


def test_unexpected_error_is_a_500_in_openai_shape_with_the_request_id(make_relay: RelayFactory) -> None:
    class BrokenLimiter:  # a bug in admission
        async def admit(self, ctx: RequestContext) -> Ticket:
            raise RuntimeError("bug")

        def budget_guard(self, ctx: RequestContext) -> BudgetGuard | None:
            return None

        async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
            return None

    relay = make_relay(app_kwargs={"limiter": BrokenLimiter()})
    response = _post(relay, chat_body())
    assert response.status_code == 500
    assert response.json() == {
        "error": {"message": "Internal error.", "type": "server_error", "param": None, "code": "internal_error"}
    }
    assert response.headers["x-request-id"].startswith("req_")


def test_deadline_bounds_the_wait_for_upstream_headers(make_relay: RelayFactory, recorder: RecordingFinalizer) -> None:
    # GIVEN an upstream that holds its headers back for 5 s, and 1 s left before the relay's deadline
    relay = make_relay(app_kwargs={"finalizers": [recorder]}, function_timeout_s=2.0, deadline_margin_s=1.0)
    response = _post(relay, chat_body(stream=True, mock={"headers_delay_ms": 5000}))
    # THEN the relay answers 504 `deadline` before the function timeout, and the request was finalized as such
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline"
    outcome = recorder.wait(response.headers["x-request-id"])
    assert outcome.reason.value == "deadline" and outcome.duration_s < 2.0


def test_cancel_while_waiting_for_upstream_headers(
    make_relay: RelayFactory, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    import threading
    import time

    # GIVEN a request whose upstream holds its headers back for 5 s, waiting for them
    relay = make_relay(app_kwargs={"finalizers": [recorder]})
    results: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: results.append(_post(relay, chat_body(stream=True, mock={"headers_delay_ms": 5000})))
    )
    thread.start()
    (request_id,) = wait_until(lambda: list(upstream.state.requests), "the request reached the upstream")
    # WHEN the client cancels before any byte came back
    started = time.monotonic()
    cancel = httpx.post(f"{relay.url}/v1/requests/{request_id}/cancel", headers=relay.headers())
    thread.join(timeout=30)
    # THEN the waiting request ends with 409 client_cancelled, before the upstream would have answered
    assert cancel.status_code == 202
    assert results[0].status_code == 409 and results[0].json()["error"]["code"] == "client_cancelled"
    assert time.monotonic() - started < 5.0
    assert recorder.wait(request_id).reason.value == "client_cancelled"
    # AND the upstream request is closed
    wait_until(lambda: upstream.state.requests[request_id].disconnected_at, "the upstream request closed")


def test_upstream_rate_limit_passes_its_wait_to_the_client(make_relay: RelayFactory) -> None:
    relay = make_relay(upstream_max_retries=0)
    response = _post(relay, chat_body(stream=True, mock={"status": 429, "retry_after": 7}))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert response.headers["retry-after"] == "7"
