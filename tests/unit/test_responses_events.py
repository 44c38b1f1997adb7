"""The Responses API's events and bodies, rendered from chat chunks, read back with the official openai SDK: every
event validated as its SDK type, the SDK's own stream accumulator run over them, and the SDK's client reading the
exact bytes through `httpx2.MockTransport` (no socket)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, get_args

import httpx2
import openai
import pytest
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import (
    Response,
    ResponseError,
    ResponseFailedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter, ValidationError

from llm_relay.apis.responses import ResponsesApi
from llm_relay.apis.responses_events import ResponsesFraming, responses_answer, responses_usage

RID = "req_0123abcd"
CREATED = 1700000000
ADAPTER: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
OPENAI_ERROR_CODES = frozenset(get_args(ResponseError.model_fields["code"].annotation))
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 4}}
OK_USAGE = {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": RID, "object": "chat.completion.chunk", "created": CREATED, "model": "m", "choices": choices}


def summary(finish: str | None, reason: str | None = None) -> dict[str, Any]:
    return {
        "object": "relay.summary",
        "id": RID,
        "model": "m",
        "finish_reason": finish,
        "termination_reason": reason or finish,
        "usage": {**USAGE, "estimated": False},
        "cost_usd": None,
    }


def error_body(code: str, message: str = "It failed.", error_type: str = "upstream_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code, "request_id": RID}}


def render(deltas: Sequence[dict[str, Any] | None], *, end: dict[str, Any] | None = None, error: Any = None) -> bytes:
    """The bytes of one stream: each delta as a chunk (None: a chunk without choices), then its end."""
    framing = ResponsesFraming(RID, "m", CREATED)
    wire = b"".join(framing.chunk(chunk(delta)) for delta in deltas)
    wire += framing.error(error) if error is not None else framing.end(end or summary("stop"))
    return wire


def events_of(wire: bytes) -> list[dict[str, Any]]:
    """The SSE events, each checked: `event:` names its data's type, and the numbering is the relay's, from 0."""
    events = []
    for block in wire.decode().split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name_line.removeprefix("event: ")
        events.append(data)
    assert wire.endswith(b"\n\n")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def sdk_event(data: dict[str, Any]) -> ResponseStreamEvent:
    """An event as the SDK's own type. A failed response keeps the relay's code (`content_filtered`...), which
    OpenAI's schema does not list: that, and nothing else, is what strict validation objects to."""
    if data["type"] == "response.failed" and data["response"]["error"]["code"] not in OPENAI_ERROR_CODES:
        with pytest.raises(ValidationError) as caught:
            ResponseFailedEvent.model_validate(data)
        assert [e["loc"] for e in caught.value.errors()] == [("response", "error", "code")]
        error = {**data["response"]["error"], "code": "server_error"}
        data = {**data, "response": {**data["response"], "error": error}}
    return ADAPTER.validate_python(data)


def accumulate(events: list[dict[str, Any]]) -> ResponseStreamState[Any]:
    """The SDK's stream accumulator (what `responses.stream(...)` runs), fed every event."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
    for data in events:
        state.handle_event(sdk_event(data))
    return state


def final(wire: bytes) -> Any:
    response = accumulate(events_of(wire))._completed_response
    assert response is not None
    return response


def sdk_client(body: bytes, content_type: str = "text/event-stream") -> openai.OpenAI:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": content_type})

    http = httpx2.Client(transport=httpx2.MockTransport(answer))
    return openai.OpenAI(api_key="sk-test", base_url="http://relay.test/v1", http_client=http, max_retries=0)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("response.") for e in events]


TEXT_ITEM = [
    "output_item.added",
    "content_part.added",
    "output_text.delta",
    "output_text.delta",
    "output_text.delta",
    "output_text.done",
    "content_part.done",
    "output_item.done",
]


# --- text ----------------------------------------------------------------------------------------------------------


def test_text_split_anywhere_is_one_message_and_the_sdk_gets_it_whole() -> None:
    # GIVEN text in odd splits, after a role-only chunk with empty content and a chunk without choices
    deltas: list[dict[str, Any] | None] = [{"role": "assistant", "content": ""}, None]
    deltas += [{"content": "Grü"}, {"content": "ße, wor"}, {"content": "ld 🚀"}]
    # WHEN rendered and ended normally
    wire = render(deltas, end=summary("stop"))
    events = events_of(wire)
    # THEN the events are the API's, in its order, for one message with one text part
    assert types(events) == ["created", "in_progress", *TEXT_ITEM, "completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert {e["item_id"] for e in events if "item_id" in e} == {"msg_0123abcd_0"}
    # AND the SDK's accumulator returns the whole text, the status, and the usage in the Responses API's names
    response = final(wire)
    assert (response.id, response.status, response.output_text) == (RID, "completed", "Grüße, world 🚀")
    assert response.usage.model_dump(include={"input_tokens", "output_tokens", "total_tokens"}) == OK_USAGE
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_the_sdk_client_streams_the_exact_bytes() -> None:
    wire = render([{"content": "Hel"}, {"content": "lo"}])
    with sdk_client(wire).responses.stream(model="m", input="hi") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        response = stream.get_final_response()
    assert deltas == ["Hel", "lo"] and response.output_text == "Hello"


def test_a_refusal_is_a_refusal_part_of_the_message() -> None:
    wire = render([{"refusal": "I can't "}, {"refusal": "help."}])
    events = events_of(wire)
    assert types(events)[2:-1] == [
        "output_item.added",
        "content_part.added",
        "refusal.delta",
        "refusal.delta",
        "refusal.done",
        "content_part.done",
        "output_item.done",
    ]
    assert events[-4]["refusal"] == "I can't help."
    message = final(wire).output[0]
    assert [(part.type, part.refusal) for part in message.content] == [("refusal", "I can't help.")]


def test_reasoning_is_a_reasoning_item_before_the_message() -> None:
    wire = render([{"reasoning_content": "Think"}, {"reasoning_content": "ing."}, {"content": "Answer."}])
    events = events_of(wire)
    assert "reasoning_text.delta" in types(events)
    response = final(wire)
    reasoning, message = response.output
    assert (reasoning.type, reasoning.id, [c.text for c in reasoning.content or []]) == (
        "reasoning",
        "rs_0123abcd_0",
        ["Thinking."],
    )
    assert (message.type, message.id, response.output_text) == ("message", "msg_0123abcd_1", "Answer.")


# --- tool calls ----------------------------------------------------------------------------------------------------


def tool_delta(index: int, *, call_id: str | None = None, name: str | None = None, args: str = "") -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if call_id is not None:
        call |= {"id": call_id, "type": "function"}
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def test_tool_calls_are_function_call_items_with_their_arguments() -> None:
    # GIVEN some text, then two calls whose arguments arrive in pieces
    deltas = [
        {"content": "Checking."},
        tool_delta(0, call_id="call_a", name="weather"),
        tool_delta(0, args='{"city":'),
        tool_delta(0, args='"Paris"}'),
        tool_delta(1, call_id="call_b", name="time", args='{"tz":"CET"}'),
    ]
    # WHEN rendered and ended with finish tool_calls
    wire = render(deltas, end=summary("tool_calls"))
    events = events_of(wire)
    # THEN each call is an item opened with empty arguments, filled by deltas, closed with the whole arguments
    calls = [e for e in events if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call"]
    assert [(c["item"]["call_id"], c["item"]["name"], c["item"]["arguments"]) for c in calls] == [
        ("call_a", "weather", ""),
        ("call_b", "time", ""),
    ]
    done = [e["arguments"] for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done == ['{"city":"Paris"}', '{"tz":"CET"}']
    # AND the message was closed before the first call opened (one item open at a time)
    opened_closed = [(e["type"][-5:], e["output_index"]) for e in events if "output_item" in e["type"]]
    assert opened_closed == [("added", 0), (".done", 0), ("added", 1), (".done", 1), ("added", 2), (".done", 2)]
    # AND the SDK's final response has the text and both calls, completed
    response = final(wire)
    assert response.status == "completed" and response.output_text == "Checking."
    assert [(o.type, o.id, o.status) for o in response.output[1:]] == [
        ("function_call", "fc_0123abcd_1", "completed"),
        ("function_call", "fc_0123abcd_2", "completed"),
    ]


def test_a_piece_of_a_call_already_closed_is_not_attached_to_another() -> None:
    deltas = [tool_delta(0, call_id="a", name="f", args="{}"), tool_delta(1, call_id="b", name="g", args="{}")]
    wire = render([*deltas, tool_delta(0, args="late")], end=summary("tool_calls"))
    assert [o.arguments for o in final(wire).output] == ["{}", "{}"]


def test_a_call_without_an_id_gets_the_relays_own() -> None:
    wire = render([{"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}])
    assert final(wire).output[0].call_id == "call_0123abcd_0"


# --- endings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "reason", "status", "details"),
    [
        ("length", None, "incomplete", "max_output_tokens"),
        ("content_filter", None, "incomplete", "content_filter"),
        (None, "client_cancelled", "cancelled", None),
    ],
)
def test_an_answer_cut_short_ends_with_an_incomplete_response(
    finish: str | None, reason: str | None, status: str, details: str | None
) -> None:
    # GIVEN text, then an end that is not a finish of the model's own choosing
    wire = render([{"content": "Once upon"}], end=summary(finish, reason))
    events = events_of(wire)
    # THEN the text item is closed as incomplete, and the stream ends with `response.incomplete` saying why
    assert types(events)[-2:] == ["output_item.done", "incomplete"]
    assert events[-2]["item"]["status"] == "incomplete"
    response = sdk_event(events[-1]).response  # type: ignore[union-attr]
    assert response.status == status and response.output_text == "Once upon"
    assert (response.incomplete_details and response.incomplete_details.reason) == details
    assert response.usage is not None and response.usage.output_tokens == 7
    # AND the SDK's accumulator, like OpenAI's own API, gives no final response for it (only `completed` does)
    assert accumulate(events)._completed_response is None


def test_a_failure_mid_stream_is_a_failed_response_then_the_error_event() -> None:
    # GIVEN text, then the relay's budget cut
    budget = error_body("budget_exceeded", "The key's budget is spent.", "rate_limit_error")
    wire = render([{"content": "Partial"}], error=budget)
    events = events_of(wire)
    # THEN the open item is closed, the response fails with the relay's code and the output so far, then `error`
    assert types(events)[-3:] == ["output_item.done", "failed", "error"]
    failed, error = events[-2], events[-1]
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "budget_exceeded",
        "message": "The key's budget is spent.",
        "param": None,
        "type": "rate_limit_error",
    }
    assert failed["response"]["output"][0]["content"][0]["text"] == "Partial"
    # AND the error event has the documented flat fields and the relay's error object nested, as OpenAI sends it
    assert (error["code"], error["message"], error["param"]) == ("budget_exceeded", "The key's budget is spent.", None)
    assert error["error"] == budget["error"]
    accumulate(events)  # every event is one the SDK takes


def test_a_blocked_answer_fails_with_content_filtered_and_the_sdk_raises_it() -> None:
    # GIVEN released text, the gate's content_filter finish, then its error
    blocked = error_body("content_filtered", "The answer was blocked.", "invalid_request_error")
    blocked["error"]["entity_types"] = ["EMAIL_ADDRESS"]
    wire = render([{"content": "Contact: "}, {}], error=blocked)
    framing_events = events_of(wire)
    assert framing_events[-2]["response"]["error"]["code"] == "content_filtered"
    # WHEN the SDK's client streams it
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as caught, sdk_client(wire).responses.stream(model="m", input="x") as stream:
        seen.extend(stream)
    # THEN it saw the failed response, then raised the relay's error (its code, and the entity types in its body)
    assert seen[-1].type == "response.failed" and seen[-1].response.error.code == "content_filtered"
    assert (caught.value.code, caught.value.message) == ("content_filtered", "The answer was blocked.")
    assert caught.value.body == blocked["error"]


def test_a_failure_before_any_chunk_still_begins_with_the_created_response() -> None:
    framing = ResponsesFraming(RID, "m", CREATED)
    events = events_of(framing.error(error_body("upstream_timeout")))
    assert types(events) == ["created", "in_progress", "failed", "error"]
    assert events[2]["response"]["output"] == [] and events[3]["code"] == "upstream_timeout"
    accumulate(events)


def test_nothing_is_rendered_after_the_end() -> None:
    framing = ResponsesFraming(RID, "m", CREATED)
    framing.chunk(chunk({"content": "x"}))
    assert framing.end(summary("stop"))
    assert framing.chunk(chunk({"content": "y"})) == framing.end(summary("stop")) == framing.error({}) == b""


def test_an_empty_answer_is_a_completed_response_without_output() -> None:
    events = events_of(render([None]))
    assert types(events) == ["created", "in_progress", "completed"]
    assert events[-1]["response"]["output"] == []


def test_framing_constants_and_the_ids_of_a_client_chosen_request_id() -> None:
    framing = ResponsesApi().framing("my id/with odd:chars", "m", CREATED)
    assert (framing.media_type, framing.heartbeat, framing.nudge) == ("text/event-stream", b": ping\n\n", b"\n")
    item_id = events_of(framing.chunk(chunk({"content": "x"})))[2]["item"]["id"]
    assert item_id.startswith("msg_") and item_id[4:-2].isalnum() and len(item_id) == 4 + 32 + 2


# --- stream: false, errors -----------------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str | None, usage: dict[str, Any] | None = USAGE) -> dict[str, Any]:
    return {
        "id": RID,
        "object": "chat.completion",
        "created": CREATED,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage,
    }


def test_the_answer_is_a_response_object_the_sdk_validates() -> None:
    # GIVEN an assembled completion with text and a tool call
    call = {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    body = ResponsesApi().answer(completion({"content": "Sure.", "refusal": None, "tool_calls": [call]}, "tool_calls"))
    # WHEN validated as the SDK's Response (strictly) and read by the SDK's client
    response = Response.model_validate(body, strict=True)
    via_client = sdk_client(json.dumps(body).encode(), "application/json").responses.create(model="m", input="x")
    # THEN it is a completed response with the message, the call and the usage
    for read in (response, via_client):
        assert (read.id, read.status, read.output_text) == (RID, "completed", "Sure.")
        assert [o.type for o in read.output] == ["message", "function_call"]
        assert isinstance(read.output[1], ResponseFunctionToolCall)
        assert (read.output[1].arguments, read.output[1].call_id) == ('{"x":1}', "call_a")
        assert read.usage is not None and read.usage.total_tokens == 19
    assert "output_text" not in body  # an SDK property, not a field


def test_a_truncated_answer_is_incomplete() -> None:
    body = responses_answer(completion({"content": "Once", "refusal": None}, "length"))
    response = Response.model_validate(body, strict=True)
    assert isinstance(response.output[0], ResponseOutputMessage)
    assert response.status == "incomplete" and response.output[0].status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


def test_an_answer_without_usage_has_none() -> None:
    body = responses_answer(completion({"content": "Hi", "refusal": None}, "stop", usage=None))
    assert body["usage"] is None and Response.model_validate(body).output_text == "Hi"


def test_usage_keeps_reasoning_tokens_when_the_upstream_counts_them() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 6}}
    mapped = responses_usage(usage)
    assert mapped is not None
    assert (mapped["output_tokens_details"], mapped["total_tokens"]) == ({"reasoning_tokens": 6}, 10)


def test_an_http_error_is_the_openai_body_unchanged() -> None:
    body = error_body("model_not_allowed", error_type="invalid_request_error")
    assert ResponsesApi().error(body, 403) == body
