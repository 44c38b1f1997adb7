"""The assembled answer's validation through a real relay: structured outputs (`response_format`) and tool-call
arguments, valid and not, on SSE (the openai SDK and raw events), NDJSON and `stream: false`, in `report` mode (the
verdict on the finishing chunk, the summary, the body, the outcome and the usage record read back from DynamoDB) and
in `enforce` mode (the terminal error `invalid_output`, the reason still the upstream's); a schema refused before
admission; the Responses API. The log line, the EMF metric and `llm-relay usage` through `make dev`'s entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from llm_relay.validation import Verdict
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.devserver_support import DevServer, dev_server
from tests.integration.helpers import RecordingFinalizer, chat_body, ndjson_lines, sse_events
from tests.integration.test_upstream_kinds import record_of

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
VALID = json.dumps({"name": "Ada", "age": 36})
VIOLATION = json.dumps({"name": "Ada", "age": -1})
NOT_JSON = '{"name": "Ada", "age": '
TOOLS = [{"type": "function", "function": {"name": "mock_tool", "parameters": {"type": "object"}}}]
VIOLATION_ERRORS = ["content: fails /properties/age/minimum = 0"]
NOT_JSON_ERRORS = ["content: not valid JSON (Expecting value: line 1 column 24)"]


def _mock(text: str, **extra: Any) -> dict[str, Any]:
    return {"text": text, "chunk_chars": 4, "chunk_delay_ms": 0, "ttft_ms": 1, **extra}


def _finish_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in chunks if any(choice.get("finish_reason") for choice in c.get("choices") or ())]


@pytest.fixture
def recorder() -> RecordingFinalizer:
    return RecordingFinalizer()


@pytest.fixture
def reporting(make_relay: RelayFactory, recorder: RecordingFinalizer) -> Relay:
    return make_relay(app_kwargs={"finalizers": [recorder]})  # RELAY_VALIDATE's default: report


@pytest.fixture
def enforcing(make_relay: RelayFactory, recorder: RecordingFinalizer) -> Relay:
    return make_relay(output_validation="enforce", app_kwargs={"finalizers": [recorder]})


# --- report -----------------------------------------------------------------------------------------------------
def test_a_valid_structured_answer_is_valid_on_its_finishing_chunk_for_the_openai_sdk(
    reporting: Relay,
    recorder: RecordingFinalizer,
    closing: ExitStack,
) -> None:
    # GIVEN a request for a JSON schema's output, and an upstream whose answer matches it
    client = closing.enter_context(openai.OpenAI(base_url=f"{reporting.url}/v1", api_key=reporting.key, max_retries=0))
    # WHEN the openai SDK streams it
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Who?"}],
        stream=True,
        extra_body={"response_format": SCHEMA_FORMAT, "mock": _mock(VALID)},
    )
    chunks = [chunk.model_dump() for chunk in stream]
    # THEN the text is the upstream's, and the chunk with the finish says the answer is valid
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"]) == VALID
    [finish] = _finish_chunks(chunks)
    assert finish["validation"] == {"valid": True, "errors": []}
    # AND so do the outcome and the usage record read back from DynamoDB
    request_id = chunks[0]["id"]
    assert recorder.wait(request_id).validation == Verdict(True)
    assert record_of(reporting, request_id).validation == Verdict(True)


def test_an_answer_that_is_not_json_is_reported_on_the_ndjson_summary_and_the_record(
    reporting: Relay, recorder: RecordingFinalizer
) -> None:
    # GIVEN an upstream whose answer to a JSON schema request is cut JSON
    body = chat_body(response_format=SCHEMA_FORMAT, mock=_mock(NOT_JSON))
    # WHEN it streams as NDJSON
    response = httpx.post(f"{reporting.url}/api/v1/chat/stream", json=body, headers=reporting.headers(), timeout=30)
    lines = ndjson_lines(response.text)
    # THEN it ends normally (report), and the summary and the finishing chunk carry the invalid verdict
    summary = lines[-1]
    assert summary["object"] == "relay.summary" and summary["termination_reason"] == "stop"
    assert summary["validation"] == {"valid": False, "errors": NOT_JSON_ERRORS}
    assert _finish_chunks(lines[:-1])[0]["validation"] == summary["validation"]
    # AND the record holds it, as DynamoDB gives it back
    record = record_of(reporting, summary["id"])
    assert record.validation == Verdict(False, tuple(NOT_JSON_ERRORS))
    assert record.as_json()["validation"] == summary["validation"]


def test_a_schema_violation_is_reported_in_the_one_json_body(reporting: Relay, recorder: RecordingFinalizer) -> None:
    body = chat_body(response_format=SCHEMA_FORMAT, mock=_mock(VIOLATION))
    response = httpx.post(f"{reporting.url}/v1/chat/completions", json=body, headers=reporting.headers(), timeout=30)
    assert response.status_code == 200
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == VIOLATION
    assert answer["validation"] == {"valid": False, "errors": VIOLATION_ERRORS}  # beside `usage`
    assert recorder.wait(answer["id"]).validation == Verdict(False, tuple(VIOLATION_ERRORS))


def test_broken_tool_call_arguments_are_reported_on_the_tool_calls_finish(
    reporting: Relay, recorder: RecordingFinalizer
) -> None:
    # GIVEN a request with tools, and an upstream that calls one with arguments that are not JSON
    body = chat_body(stream=True, tools=TOOLS, mock=_mock("", tool_args='{"city": "Par'))
    response = httpx.post(f"{reporting.url}/v1/chat/completions", json=body, headers=reporting.headers(), timeout=30)
    events = sse_events(response.text)
    chunks = [json.loads(e) for e in events[:-1]]
    # THEN the stream ends normally, its `tool_calls` finish carrying the verdict that names the call
    assert events[-1] == "[DONE]"
    [finish] = _finish_chunks(chunks)
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    error = "tool_calls[0].function.arguments: not valid JSON (Unterminated string starting at: line 1 column 10)"
    assert finish["validation"] == {"valid": False, "errors": [error]}
    outcome = recorder.wait(chunks[0]["id"])
    assert outcome.reason.value == "tool_calls" and outcome.validation == Verdict(False, (error,))


def test_valid_tool_call_arguments_are_valid(reporting: Relay) -> None:
    body = chat_body(tools=TOOLS, mock=_mock("", tool_args='{"city": "Paris"}'))
    response = httpx.post(f"{reporting.url}/v1/chat/completions", json=body, headers=reporting.headers(), timeout=30)
    answer = response.json()
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["validation"] == {"valid": True, "errors": []}


def test_an_answer_nothing_was_asked_of_carries_no_verdict(reporting: Relay, recorder: RecordingFinalizer) -> None:
    response = httpx.post(
        f"{reporting.url}/api/v1/chat/stream", json=chat_body(mock=_mock("plain text")), headers=reporting.headers()
    )
    lines = ndjson_lines(response.text)
    assert "validation" not in lines[-1] and not any("validation" in line for line in lines)
    assert recorder.wait(lines[-1]["id"]).validation is None
    assert record_of(reporting, lines[-1]["id"]).validation is None


# --- enforce ----------------------------------------------------------------------------------------------------
def test_enforced_an_invalid_sse_answer_ends_with_the_invalid_output_error_for_the_openai_sdk(
    enforcing: Relay,
    recorder: RecordingFinalizer,
    closing: ExitStack,
) -> None:
    # GIVEN an enforcing relay and an answer that breaks its schema
    client = closing.enter_context(openai.OpenAI(base_url=f"{enforcing.url}/v1", api_key=enforcing.key, max_retries=0))
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Who?"}],
        stream=True,
        extra_body={"response_format": SCHEMA_FORMAT, "mock": _mock(VIOLATION)},
    )
    # WHEN the SDK reads it THEN it gets the answer and its finish (with the verdict), then raises on the terminal
    # error instead of a normal end
    chunks: list[dict[str, Any]] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            chunks.append(chunk.model_dump())
    assert "failed the relay's validation" in failed.value.message
    assert _finish_chunks(chunks)[0]["validation"] == {"valid": False, "errors": VIOLATION_ERRORS}
    # AND the request ended as the upstream ended it (the answer was generated, and is billed), with the error's code
    outcome = recorder.wait(chunks[0]["id"])
    assert (outcome.reason.value, outcome.error_code) == ("stop", "invalid_output")
    assert outcome.cost_usd is not None and outcome.cost_usd > 0
    assert record_of(enforcing, chunks[0]["id"]).termination_reason == "stop"


def test_enforced_the_raw_sse_stream_has_the_error_event_instead_of_done(enforcing: Relay) -> None:
    body = chat_body(stream=True, response_format={"type": "json_object"}, mock=_mock("not json"))
    response = httpx.post(f"{enforcing.url}/v1/chat/completions", json=body, headers=enforcing.headers(), timeout=30)
    events = sse_events(response.text)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert (error["code"], error["type"]) == ("invalid_output", "upstream_error")
    assert error["validation"] == {
        "valid": False,
        "errors": ["content: not valid JSON (Expecting value: line 1 column 1)"],
    }
    assert "entity_types" not in error


def test_enforced_an_invalid_ndjson_answer_ends_with_the_error_line_instead_of_the_summary(
    enforcing: Relay, recorder: RecordingFinalizer
) -> None:
    body = chat_body(response_format=SCHEMA_FORMAT, mock=_mock(NOT_JSON))
    response = httpx.post(f"{enforcing.url}/api/v1/chat/stream", json=body, headers=enforcing.headers(), timeout=30)
    lines = ndjson_lines(response.text)
    assert not any(line.get("object") == "relay.summary" for line in lines)
    error = lines[-1]["error"]
    assert error["code"] == "invalid_output" and error["validation"]["errors"] == NOT_JSON_ERRORS
    assert _finish_chunks(lines[:-1])[0]["choices"][0]["finish_reason"] == "stop"  # the answer itself went out
    assert recorder.wait(error["request_id"]).reason.value == "stop"


def test_enforced_an_invalid_json_body_is_a_502(enforcing: Relay, recorder: RecordingFinalizer) -> None:
    body = chat_body(tools=TOOLS, mock=_mock("", tool_args="[1, 2]"))
    response = httpx.post(f"{enforcing.url}/v1/chat/completions", json=body, headers=enforcing.headers(), timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "invalid_output"
    assert error["validation"]["errors"] == ["tool_calls[0].function.arguments: not a JSON object"]
    assert "x-relay-cost-usd" in response.headers  # generated, so billed: the record counts it too
    outcome = recorder.wait(response.headers["x-request-id"])
    assert (outcome.reason.value, outcome.error_code) == ("tool_calls", "invalid_output")


def test_enforced_a_valid_answer_ends_normally(enforcing: Relay) -> None:
    body = chat_body(stream=True, response_format=SCHEMA_FORMAT, mock=_mock(VALID))
    response = httpx.post(f"{enforcing.url}/v1/chat/completions", json=body, headers=enforcing.headers(), timeout=30)
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert _finish_chunks([json.loads(e) for e in events[:-1]])[0]["validation"]["valid"] is True


# --- before admission, and the other APIs -----------------------------------------------------------------------
def test_an_invalid_schema_is_refused_before_admission(reporting: Relay, upstream: Upstream) -> None:
    # GIVEN a schema no validator can apply
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    body = chat_body(stream=True, response_format=response_format, mock=_mock(VALID))
    # WHEN it is sent THEN it is a 400 naming the schema, and nothing was admitted, sent upstream or recorded
    response = httpx.post(f"{reporting.url}/v1/chat/completions", json=body, headers=reporting.headers(), timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("response_format.json_schema.schema", "invalid_request")
    assert upstream.state.requests == {}
    assert reporting.stores.usage.for_key(reporting.api_key.key_id, 0, 2e10) == []


def test_the_responses_api_names_its_own_schema_field(reporting: Relay) -> None:
    body = {
        "model": "gpt-4o-mini",
        "input": "Who?",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}},
    }
    response = httpx.post(f"{reporting.url}/v1/responses", json=body, headers=reporting.headers(), timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "text.format.schema"


def _responses_body(text: str, **extra: Any) -> dict[str, Any]:
    faults = _mock(text)
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON}
    return {
        "model": "gpt-4o-mini",
        "instructions": f"mock: {json.dumps(faults)}",
        "input": "Who?",
        "text": {"format": fmt},
        **extra,
    }


def test_a_responses_stream_passed_through_is_validated_and_recorded(
    reporting: Relay, upstream: Upstream, closing: ExitStack
) -> None:
    client = closing.enter_context(openai.OpenAI(base_url=f"{reporting.url}/v1", api_key=reporting.key, max_retries=0))
    with client.responses.stream(**_responses_body(VIOLATION)) as stream:
        response = stream.get_final_response()
    assert response.output_text == VIOLATION
    assert "input" in upstream.state.bodies[0]  # the provider's own events, relayed as they came
    assert record_of(reporting, response.id).validation == Verdict(False, tuple(VIOLATION_ERRORS))


def test_enforced_a_responses_stream_fails_with_invalid_output(enforcing: Relay, upstream: Upstream) -> None:
    # GIVEN an enforcing relay: the provider's own events could not be refused once relayed, so it sends chat
    response = httpx.post(
        f"{enforcing.url}/v1/responses",
        json=_responses_body(NOT_JSON, stream=True),
        headers=enforcing.headers(),
        timeout=30,
    )
    events = [json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: {")]
    # THEN the provider was sent the translated chat request, and the stream ends with the API's failure events,
    # carrying the relay's code
    assert "messages" in upstream.state.bodies[0]
    assert [e["type"] for e in events[-2:]] == ["response.failed", "error"]
    assert events[-1]["code"] == "invalid_output"
    assert events[-2]["response"]["error"]["code"] == "invalid_output"


# --- the log line, the metric, the CLI --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    with dev_server() as server:
        yield server


def test_the_verdict_is_on_the_log_line_the_metric_and_llm_relay_usage(dev: DevServer) -> None:
    # GIVEN a valid and an invalid structured answer, through `make dev`'s own entry point (report, the default)
    headers = {"authorization": f"Bearer {dev.key}"}
    ids = []
    for text in (VALID, VIOLATION):
        body = chat_body(response_format=SCHEMA_FORMAT, mock=_mock(text))
        response = httpx.post(f"{dev.url}/api/v1/chat/stream", json=body, headers=headers, timeout=30)
        ids.append(response.headers["x-request-id"])
    # THEN each request's log line carries its verdict (never the answer)
    lines = [dev.wait_finished(request_id) for request_id in ids]
    assert [line["validation"] for line in lines] == [
        {"valid": True, "errors": []},
        {"valid": False, "errors": VIOLATION_ERRORS},
    ]
    assert all(VIOLATION not in json.dumps(line) for line in lines)
    # AND the EMF metric counts one of each, by result
    results = sorted(doc["result"] for doc in dev.emf() if "OutputValidation" in doc)
    assert results == ["invalid", "valid"]
    directive = next(doc for doc in dev.emf() if "OutputValidation" in doc)["_aws"]["CloudWatchMetrics"][0]
    assert directive["Dimensions"] == [["result", "service"]]
    # AND `llm-relay usage --json` shows the records' verdicts, read back from the table
    cli = subprocess.run(
        [sys.executable, "-m", "llm_relay.cli", "usage", "--json"],
        capture_output=True,
        text=True,
        env={**dev.env, "RELAY_DYNAMODB_ENDPOINT": dev.moto_url},
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    records = {r["request_id"]: r for r in json.loads(cli.stdout)["records"]}
    assert [records[request_id]["validation"]["valid"] for request_id in ids] == [True, False]
