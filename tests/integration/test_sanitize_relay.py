"""The compliance gate through a real relay: redaction and blocking on live streams (SSE, NDJSON, one JSON body),
on the prompt, on tool-call arguments, with the openai SDK and curl as clients, per-key policies over the
deployment's floor, and the audit trail on the record, the summary and the final chunk."""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from llm_relay.keys import ApiKey, generate_key, generate_key_id, hash_key, now_iso
from llm_relay.sanitize.chunks import detector_for
from llm_relay.sanitize.policy import ENTITY_TYPES, KeyPolicy
from llm_relay.sanitize.scanner import redact
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.helpers import RecordingFinalizer, chat_body, ndjson_lines, sse_events
from tests.waiting import wait_until

ANSWER = (
    "Sure. Write to jane.roe@example.org or call +1 415-555-2671; the card on file is 4111 1111 1111 1111 "
    "and the server is 10.20.30.40. Version 1.2.3 shipped on 2024-01-15."
)
EXPECTED = (
    "Sure. Write to [EMAIL] or call [PHONE_NUMBER]; the card on file is [CREDIT_CARD] "
    "and the server is [IP_ADDRESS]. Version 1.2.3 shipped on 2024-01-15."
)
RAW_VALUES = ("jane.roe@example.org", "415-555-2671", "4111 1111 1111 1111", "10.20.30.40")


def _mock(text: str = ANSWER, chunk_chars: int = 3, **extra: Any) -> dict[str, Any]:
    """The mock upstream streams `text` a few characters a chunk: every value is split across chunks."""
    return {"text": text, "chunk_chars": chunk_chars, "chunk_delay_ms": 0, "ttft_ms": 1, **extra}


def _content(chunks: list[dict[str, Any]]) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk.get("choices") or ())


@pytest.fixture
def recorder() -> RecordingFinalizer:
    return RecordingFinalizer()


@pytest.fixture
def redacting(make_relay: RelayFactory, recorder: RecordingFinalizer) -> Relay:
    return make_relay(sanitize="redact", app_kwargs={"finalizers": [recorder]})


@pytest.fixture
def blocking(make_relay: RelayFactory, recorder: RecordingFinalizer) -> Relay:
    return make_relay(sanitize="block", app_kwargs={"finalizers": [recorder]})


def test_expected_text_is_the_redaction_of_the_answer() -> None:
    # The fixture's own premise, from the same definition the stream must add up to.
    detector = detector_for(frozenset(ENTITY_TYPES), "US")
    assert redact(detector, ANSWER, lambda e: f"[{e}]").text == EXPECTED


def test_sse_redacts_values_split_across_chunks_for_the_openai_sdk(
    redacting: Relay,
    recorder: RecordingFinalizer,
    upstream: Upstream,
    closing: ExitStack,
) -> None:
    # GIVEN a relay whose deployment redacts the output, and an answer whose values arrive 3 characters a chunk
    client = closing.enter_context(openai.OpenAI(base_url=f"{redacting.url}/v1", api_key=redacting.key, max_retries=0))
    # WHEN the openai SDK streams it
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mock": _mock()},
    )
    chunks = [chunk.model_dump() for chunk in stream]
    # THEN the text it reads is exactly the redacted answer, and it ends as the upstream ended it
    assert _content(chunks) == EXPECTED
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finishes] == ["stop"]
    # AND the chunk with the finish and the usage chunk carry the audit (counts by type, never values)
    counts = {"EMAIL": 1, "PHONE_NUMBER": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1}
    assert finishes[0]["redactions"] == counts
    assert chunks[-1]["usage"]["completion_tokens"] == upstream.state.requests[chunks[0]["id"]].chunks_sent
    assert chunks[-1]["redactions"] == counts
    # AND the record counts what the upstream generated, and what was redacted
    outcome = recorder.wait(chunks[0]["id"])
    assert outcome.reason.value == "stop" and not outcome.usage.estimated
    assert outcome.usage.completion_tokens == upstream.state.requests[chunks[0]["id"]].chunks_sent
    assert dict(outcome.redactions) == counts


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_ndjson_through_curl_redacts_and_summarises(redacting: Relay) -> None:
    body = json.dumps(chat_body(mock=_mock(chunk_chars=1)))
    headers = ["-H", f"authorization: Bearer {redacting.key}", "-H", "content-type: application/json"]
    result = subprocess.run(
        ["curl", "-sN", *headers, "--data-binary", body, f"{redacting.url}/api/v1/chat/stream"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = ndjson_lines(result.stdout)
    assert _content(lines[:-1]) == EXPECTED
    summary = lines[-1]
    assert summary["object"] == "relay.summary" and summary["termination_reason"] == "stop"
    assert summary["redactions"] == {"EMAIL": 1, "PHONE_NUMBER": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1}
    assert not any(value in result.stdout for value in RAW_VALUES)


def test_json_answer_is_redacted_by_the_same_code(redacting: Relay) -> None:
    response = httpx.post(
        f"{redacting.url}/v1/chat/completions", json=chat_body(mock=_mock()), headers=redacting.headers()
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == EXPECTED


def test_tool_call_arguments_are_redacted_and_stay_valid_json(redacting: Relay) -> None:
    arguments = json.dumps({"to": "jane.roe@example.org", "note": "card 4111-1111-1111-1111, thanks"})
    body = chat_body(stream=True, mock=_mock(text="Sending it.", tool_args=arguments, chunk_chars=4))
    response = httpx.post(f"{redacting.url}/v1/chat/completions", json=body, headers=redacting.headers())
    chunks = [json.loads(e) for e in sse_events(response.text)[:-1]]
    calls = [c for chunk in chunks for c in chunk["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["id"] == "call_mock" and calls[0]["function"]["name"] == "mock_tool"
    sent = json.loads("".join(call["function"].get("arguments") or "" for call in calls))
    assert sent == {"to": "[EMAIL]", "note": "card [CREDIT_CARD], thanks"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_block_before_the_first_byte_is_a_400(blocking: Relay, recorder: RecordingFinalizer) -> None:
    # GIVEN a blocking deployment and an answer that starts with a value
    body = chat_body(stream=True, mock=_mock(text="jane.roe@example.org is the address you want."))
    for path in ("/v1/chat/completions", "/api/v1/chat/stream"):
        # WHEN a client streams it (SSE, then NDJSON)
        response = httpx.post(f"{blocking.url}{path}", json=body, headers=blocking.headers())
        # THEN nothing was streamed: the answer is a 400 naming the type, never the value
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "content_filtered" and error["entity_types"] == ["EMAIL"]
        assert "jane" not in response.text
        outcome = recorder.wait(response.headers["x-request-id"])
        assert outcome.reason.value == "content_filter" and dict(outcome.redactions) == {"EMAIL": 1}
    plain = httpx.post(
        f"{blocking.url}/v1/chat/completions",
        json=chat_body(mock=_mock(text="Mail jane.roe@example.org now.")),
        headers=blocking.headers(),
    )
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "content_filtered"


def test_block_after_text_ends_the_stream_with_content_filter(
    blocking: Relay, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    text = "Here is the summary you asked for. " * 3 + "Reach me at jane.roe@example.org and more text follows."
    body = chat_body(stream=True, mock=_mock(text=text, chunk_chars=5, chunk_delay_ms=1))
    response = httpx.post(f"{blocking.url}/v1/chat/completions", json=body, headers=blocking.headers())
    assert response.status_code == 200
    events = sse_events(response.text)
    error = json.loads(events[-1])["error"]
    assert error["code"] == "content_filtered" and error["entity_types"] == ["EMAIL"]
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    sent = _content(chunks)
    assert text.startswith(sent) and "jane" not in response.text and "more text" not in sent
    outcome = recorder.wait(response.headers["x-request-id"])
    assert outcome.reason.value == "content_filter" and outcome.error_code == "content_filtered"
    # AND the upstream was stopped, not read to its end
    assert not upstream.state.requests[response.headers["x-request-id"]].completed


def test_prompt_is_redacted_before_it_leaves(make_relay: RelayFactory, upstream: Upstream) -> None:
    relay = make_relay(sanitize_prompt="redact")
    messages = [{"role": "user", "content": "My card is 4111 1111 1111 1111, mail me at jane.roe@example.org"}]
    response = httpx.post(
        f"{relay.url}/v1/chat/completions", json=chat_body(messages=messages, mock=_mock("ok")), headers=relay.headers()
    )
    assert response.status_code == 200
    sent = upstream.state.bodies[-1]["messages"][0]["content"]
    assert sent == "My card is [CREDIT_CARD], mail me at [EMAIL]"
    record = _wait_record(relay, response.headers["x-request-id"])
    assert record.prompt_redactions == {"CREDIT_CARD": 1, "EMAIL": 1}


def test_prompt_block_is_a_400_that_names_types_and_costs_nothing(make_relay: RelayFactory, upstream: Upstream) -> None:
    relay = make_relay(sanitize_prompt="block")
    before = len(upstream.state.bodies)
    parts = [{"type": "text", "text": "key AKIAIOSFODNN7EXAMPLE"}]
    response = httpx.post(
        f"{relay.url}/v1/chat/completions",
        json=chat_body(messages=[{"role": "user", "content": parts}]),
        headers=relay.headers(),
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "pii_in_prompt" and "AWS_ACCESS_KEY" in error["message"]
    assert "AKIA" not in response.text
    assert len(upstream.state.bodies) == before


def test_a_key_can_tighten_the_deployment_policy_never_loosen_it(make_relay: RelayFactory) -> None:
    relay = make_relay(sanitize="redact")
    strict = _key(relay, KeyPolicy(output="block"))
    loose = _key(relay, KeyPolicy(output="off"))
    body = chat_body(stream=True, mock=_mock(text="jane.roe@example.org"))
    blocked = httpx.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(strict))
    assert blocked.status_code == 400
    redacted = httpx.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(loose))
    assert _content([json.loads(e) for e in sse_events(redacted.text)[:-1]]) == "[EMAIL]"


def test_default_policy_is_off_and_passes_values_untouched(relay: Relay) -> None:
    response = httpx.post(f"{relay.url}/v1/chat/completions", json=chat_body(mock=_mock()), headers=relay.headers())
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


def _key(relay: Relay, policy: KeyPolicy) -> str:
    plain = generate_key()
    key = ApiKey(key_id=generate_key_id(), name="sanitize-test", created_at=now_iso(), sanitize=policy)
    relay.stores.keys.put(key, hash_key(plain))
    return plain


def _wait_record(relay: Relay, request_id: str) -> Any:
    def found() -> Any:
        records = relay.stores.usage.for_key(relay.api_key.key_id, 0, 2**31)
        return next((r for r in records if r.request_id == request_id), None)

    return wait_until(found, f"the usage record of {request_id}")


# --- a stream cut short: the held tail is judged before the terminal frame, and withheld if it may begin a value ----
CUT_TEXT = "Clean start of the answer. Mail jane.roe@example.org please."
CUT_AFTER = 12  # 4-character chunks: the twelfth ends inside the address ("...jane.roe@exam")


def test_an_upstream_error_mid_value_withholds_the_unjudged_tail(
    redacting: Relay, recorder: RecordingFinalizer
) -> None:
    # GIVEN an answer that fails (an error event) right after the first part of an e-mail address
    body = chat_body(mock=_mock(text=CUT_TEXT, chunk_chars=4, error_after=CUT_AFTER))
    response = httpx.post(f"{redacting.url}/api/v1/chat/stream", json=body, headers=redacting.headers())
    lines = ndjson_lines(response.text)
    # THEN the stream ends with its terminal error, and the client read the clean text but no part of the address
    assert lines[-1]["error"]["code"] == "upstream_error"
    sent = _content(lines[:-1])
    assert sent == "Clean start of the answer. Mail "
    outcome = recorder.wait(response.headers["x-request-id"])
    assert outcome.chunks == CUT_AFTER + 1  # the role chunk and every piece: the address's first part was read


def test_the_deadline_mid_value_withholds_the_unjudged_tail(
    make_relay: RelayFactory, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    # GIVEN a relay whose deadline comes 1 s in, and an answer that stalls inside an e-mail address
    relay = make_relay(
        sanitize="redact", function_timeout_s=2.0, deadline_margin_s=1.0, app_kwargs={"finalizers": [recorder]}
    )
    body = chat_body(stream=True, mock=_mock(text=CUT_TEXT, chunk_chars=4, stall_after=CUT_AFTER))
    response = httpx.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers())
    events = sse_events(response.text)
    # THEN the deadline's terminal frame ends it, after the clean text and nothing of the address
    assert json.loads(events[-1])["error"]["code"] == "deadline"
    assert _content([json.loads(e) for e in events[:-1]]) == "Clean start of the answer. Mail "
    outcome = recorder.wait(response.headers["x-request-id"])
    assert outcome.reason.value == "deadline"
    assert outcome.chunks == CUT_AFTER + 1


def test_a_cancel_call_mid_value_withholds_the_unjudged_tail(
    redacting: Relay, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    body = chat_body(mock=_mock(text=CUT_TEXT, chunk_chars=4, stall_after=CUT_AFTER))
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{redacting.url}/api/v1/chat/stream", json=body, headers=redacting.headers()) as resp,
    ):
        request_id = resp.headers["x-request-id"]
        lines = resp.iter_lines()
        received = []
        for line in lines:  # read until the clean text before the address is in: the relay has read that far
            received.append(json.loads(line))
            if _content(received).endswith("Mail "):
                break
        wait_until(lambda: upstream.state.requests[request_id].chunks_sent == CUT_AFTER, "the stall")
        assert httpx.post(f"{redacting.url}/v1/requests/{request_id}/cancel", headers=redacting.headers()).status_code
        received += [json.loads(line) for line in lines if line.strip()]
    # THEN the summary line ends it, after the clean text and nothing of the address
    assert received[-1]["termination_reason"] == "client_cancelled"
    assert _content(received[:-1]) == "Clean start of the answer. Mail "
    assert recorder.wait(request_id).reason.value == "client_cancelled"
