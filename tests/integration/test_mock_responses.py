"""The mock upstream's Responses API (`POST /v1/responses`) over real HTTP: its event stream read by the openai SDK
and by the relay's Responses decoder (through the `openai` kind's own request), the `stream: false` Response
object, and every fault, driven by the `mock:` instructions (the way a relayed Responses request drives it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from llm_relay.apis.responses_events import ResponsesFraming
from llm_relay.upstreams.base import END, Decoded, Failed
from llm_relay.upstreams.openai import MALFORMED
from llm_relay.upstreams.openai_responses import RAW_EVENTS, OpenAIResponsesDialect
from llm_relay_dev.mock_upstream import MockState, create_mock_app
from tests.servers import serve
from tests.unit.test_responses_events import events_of, sdk_client
from tests.waiting import wait_until

TEXT_ITEM = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
INPUT = "What is the weather like?"  # 25 characters: 6 prompt tokens


@dataclass
class Mock:
    base: str
    state: MockState

    def record(self, request_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/mock/requests/{request_id}")
        assert response.status_code == 200
        record: dict[str, Any] = response.json()
        return record


@pytest.fixture(scope="module")
def mock() -> Iterator[Mock]:
    app = create_mock_app()
    with serve(app) as base:
        yield Mock(base, app.state.mock)


@dataclass
class Answer:
    status: int
    items: list[Decoded] = field(default_factory=list)
    raw: bytes = b""
    error: Exception | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line[6:]) for line in self.raw.decode().splitlines() if line.startswith("data: ")]

    @property
    def text(self) -> str:
        deltas = [i["choices"][0]["delta"] for i in self.items if isinstance(i, dict) and i["choices"]]
        return "".join(d.get("content", "") for d in deltas)

    @property
    def finish(self) -> list[str]:
        chunks = [i for i in self.items if isinstance(i, dict) and i["choices"]]
        return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]


def _body(faults: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A Responses request whose instructions ask the mock for `faults` (immediate, unless they say otherwise)."""
    body: dict[str, Any] = {"model": "client-model", "input": INPUT, **fields}
    if faults is not None:
        body["instructions"] = "mock: " + json.dumps({"ttft_ms": 0, "chunk_delay_ms": 0, **faults})
    return body


def _ask(mock: Mock, body: dict[str, Any], request_id: str, read_timeout: float = 10) -> Answer:
    """Send what the `openai` kind's Responses dialect builds, and feed the body to its decoder as it arrives."""
    dialect = OpenAIResponsesDialect(f"{mock.base}/v1")
    request = asyncio.run(dialect.request(body, "route-model", request_id))
    decoder = dialect.decoder("route-model", 1)
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=read_timeout)) as client,
        client.stream("POST", request.url, content=request.content, headers=request.headers) as response,
    ):
        answer = Answer(response.status_code)
        try:
            for raw in response.iter_raw():
                answer.raw += raw
                answer.items += decoder.feed(raw)
            answer.items += decoder.close()
        except (httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
            answer.error = exc
    return answer


# --- the stream ------------------------------------------------------------------------------------------------------


def test_a_stream_is_openais_event_sequence_with_the_providers_ids(mock: Mock) -> None:
    # GIVEN a request for two words WHEN the mock streams it
    answer = _ask(mock, _body({"tokens": 2}), "resp-text")
    # THEN the events are the API's, in its order, numbered from 0 by the provider, under its own ids
    events = answer.events
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", *TEXT_ITEM, "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert {e["response"]["id"] for e in events if "response" in e} == {events[0]["response"]["id"]}
    assert events[0]["response"]["id"].startswith("resp_mock") and events[2]["item"]["id"].startswith("msg_mock")
    assert events[0]["response"]["model"] == "route-model"  # the model the relay sent
    # AND the request went streamed, storing nothing, with the client's input
    sent = mock.state.bodies[-1]
    assert (sent["stream"], sent["store"], sent["input"]) == (True, False, INPUT)
    # AND the completed response holds the text and the usage: the input counted, the directive not
    completed = events[-1]["response"]
    assert completed["output"][0]["content"][0]["text"] == "The quick"
    assert completed["usage"] == {
        "input_tokens": len(INPUT) // 4,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": len(INPUT) // 4 + 2,
    }
    # AND the relay's decoder reads the text, the finish, the counts and the end
    assert (answer.text, answer.finish, answer.items[-1]) == ("The quick", ["stop"], END)
    record = mock.record("resp-text")
    assert (record["stream"], record["chunks_sent"], record["completed"], record["disconnected_at"]) == (
        True,
        2,
        True,
        None,
    )


def test_the_openai_sdk_streams_from_the_mock(mock: Mock, closing: ExitStack) -> None:
    client = closing.enter_context(openai.OpenAI(api_key="sk-mock", base_url=f"{mock.base}/v1", max_retries=0))
    faults = json.dumps({"ttft_ms": 0, "chunk_delay_ms": 0, "tokens": 4, "tool_args": '{"city": "Paris"}'})
    with client.responses.stream(model="m", input=INPUT, instructions=f"mock: {faults}") as stream:
        response = stream.get_final_response()
    assert response.output_text == "The quick brown fox" and response.status == "completed"
    call = response.output[1]
    assert call.type == "function_call" and (call.name, call.arguments, call.call_id) == (
        "mock_tool",
        '{"city": "Paris"}',
        "call_mock",
    )
    assert response.usage is not None and response.usage.output_tokens == 4 + 2  # the arguments' two pieces count


def test_tool_args_are_a_function_call_item_after_the_message(mock: Mock) -> None:
    answer = _ask(mock, _body({"tokens": 1, "tool_args": '{"a": 1}'}), "resp-tool")
    types = [e["type"] for e in answer.events]
    assert types[-6:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert answer.events[-6]["item"]["id"].startswith("fc_mock")
    deltas = [i["choices"][0]["delta"] for i in answer.items if isinstance(i, dict) and i["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c.get("id") for c in calls] == ["call_mock", None, None] and answer.finish == ["tool_calls"]


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_a_cut_answer_is_an_incomplete_response(mock: Mock, finish: str, reason: str) -> None:
    answer = _ask(mock, _body({"tokens": 2, "finish_reason": finish}), f"resp-{finish}")
    last = answer.events[-1]
    assert last["type"] == "response.incomplete" and last["response"]["incomplete_details"] == {"reason": reason}
    assert last["response"]["output"][0]["status"] == "incomplete" and answer.finish == [finish]


def test_the_relayed_stream_reaches_the_sdk_under_the_relays_ids(mock: Mock) -> None:
    # GIVEN the mock's stream decoded by the relay's decoder WHEN its chunks are framed as the relay frames them
    answer = _ask(mock, _body({"tokens": 3, "tool_args": "{}"}), "resp-relayed")
    framing = ResponsesFraming("req_relayed", "client-model", 1)
    wire = b"".join(
        framing.chunk({**i, "id": "req_relayed"}) for i in answer.items if isinstance(i, dict) and RAW_EVENTS in i
    )
    # THEN the SDK reads the provider's answer under the relay's ids
    events_of(wire)  # numbered by the relay from 0
    assert b"resp_mock" not in wire and b"msg_mock" not in wire and b"fc_mock" not in wire
    with sdk_client(wire).responses.stream(model="client-model", input="x") as stream:
        response = stream.get_final_response()
    assert (response.id, response.model, response.output_text) == ("req_relayed", "client-model", "The quick brown")
    assert [getattr(o, "id", None) for o in response.output] == ["msg_relayed_0", "fc_relayed_1"]


# --- stream: false ---------------------------------------------------------------------------------------------------


def test_stream_false_is_the_response_object(mock: Mock) -> None:
    response = httpx.post(
        f"{mock.base}/v1/responses", json=_body({"tokens": 3}, stream=False), headers={"x-request-id": "resp-whole"}
    )
    assert response.status_code == 200
    parsed = Response.model_validate(response.json())
    assert (parsed.status, parsed.output_text) == ("completed", "The quick brown")
    assert parsed.usage is not None and (parsed.usage.input_tokens, parsed.usage.output_tokens) == (len(INPUT) // 4, 3)
    record = mock.record("resp-whole")
    assert (record["stream"], record["chunks_sent"], record["completed"]) == (False, 3, True)


def test_the_mock_object_and_a_developer_message_drive_it_too(mock: Mock) -> None:
    directive = {"role": "developer", "content": "mock: " + json.dumps({"tokens": 1, "ttft_ms": 0})}
    for body in (
        {"model": "m", "input": "hi", "mock": {"tokens": 1, "ttft_ms": 0}},
        {"model": "m", "input": [directive, {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]},
    ):
        answer = httpx.post(f"{mock.base}/v1/responses", json=body).json()
        assert answer["output"][0]["content"][0]["text"] == "The"
        assert answer["usage"]["input_tokens"] == 1  # "hi": the directive is not prompt


def test_a_bad_directive_is_a_400(mock: Mock) -> None:
    response = httpx.post(f"{mock.base}/v1/responses", json={"model": "m", "instructions": "mock: tokens=3"})
    assert response.status_code == 400


# --- faults ----------------------------------------------------------------------------------------------------------


def test_status(mock: Mock) -> None:
    answer = _ask(mock, _body({"status": 429, "retry_after": 3}), "resp-status")
    assert answer.status == 429 and json.loads(answer.raw)["error"]["message"] == "mock: status 429"


def test_fail_first(mock: Mock) -> None:
    body = _body({"fail_first": 1, "id": "resp-retry", "tokens": 1})
    assert _ask(mock, body, "resp-fail-first-1").status == 503
    assert _ask(mock, body, "resp-fail-first-2").items[-1] is END


def test_drop_after(mock: Mock) -> None:
    answer = _ask(mock, _body({"tokens": 6, "drop_after": 3}), "resp-drop")
    assert isinstance(answer.error, httpx.RemoteProtocolError)
    assert answer.text == "The quick brown" and answer.finish == [] and END not in answer.items
    assert mock.record("resp-drop")["chunks_sent"] == 3


def test_stall_after_then_the_client_leaves(mock: Mock) -> None:
    # the stall lasts an hour: the read timeout ends the wait; 2 s so a loaded machine still delivers the first two
    answer = _ask(mock, _body({"tokens": 6, "stall_after": 2}), "resp-stall", read_timeout=2.0)
    assert isinstance(answer.error, httpx.ReadTimeout) and answer.text == "The quick" and answer.finish == []
    record = wait_until(lambda: (r := mock.record("resp-stall"))["disconnected_at"] and r, "the disconnect")
    assert (record["chunks_sent"], record["completed"]) == (2, False)


def test_malformed_after(mock: Mock) -> None:
    answer = _ask(mock, _body({"tokens": 6, "malformed_after": 2}), "resp-malformed")
    assert answer.text == "The quick" and answer.items[-1] == Failed(MALFORMED)


def test_error_after_is_an_error_event_then_the_end_of_the_body(mock: Mock) -> None:
    answer = _ask(mock, _body({"tokens": 6, "error_after": 2}), "resp-error")
    assert answer.events[-1] == {
        "type": "error",
        "sequence_number": len(answer.events) - 1,
        "code": "server_error",
        "message": "mock upstream failure",
        "param": None,
    }
    assert answer.text == "The quick" and answer.items[-1] == Failed("Upstream error: mock upstream failure")


def test_no_finish(mock: Mock) -> None:
    answer = _ask(mock, _body({"tokens": 3, "no_finish": True}), "resp-no-finish")
    assert answer.error is None and answer.text == "The quick brown"
    assert answer.events[-1]["type"] == "response.output_item.done" and answer.finish == [] and END not in answer.items
    assert mock.record("resp-no-finish")["completed"] is True


def test_headers_delay_and_ttft(mock: Mock) -> None:
    started = time.monotonic()
    answer = _ask(mock, _body({"tokens": 1, "headers_delay_ms": 200, "ttft_ms": 100}), "resp-delay")
    assert time.monotonic() - started >= 0.3 and answer.items[-1] is END
