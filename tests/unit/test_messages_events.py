"""The relay's chat chunks rendered as Anthropic Messages answers, read the way a client reads them: the installed
anthropic SDK's own event types and accumulator (`accumulate_event`), and its client over `httpx2.MockTransport`
(no socket) for what it raises. The `stream: false` Message and the error bodies are validated as the SDK's types."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.parsed_message import ParsedMessage
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from llm_relay.apis.messages import MessagesApi
from llm_relay.apis.messages_events import MessagesFraming, message_id, messages_answer, messages_error
from llm_relay.encoding import Framing

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
USAGE = {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17, "estimated": False}


def chunk(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {
        "id": "req_1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def call(index: int, arguments: str, *, id: str | None = None, name: str | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    head: dict[str, Any] = {}
    if id is not None:
        head = {"id": id, "type": "function"}
        function["name"] = name
    return {"index": index, **head, "function": function}


def summary(finish: str | None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "object": "relay.summary",
        "id": "req_1",
        "model": "m",
        "finish_reason": finish,
        "termination_reason": finish or "client_cancelled",
        "usage": usage or USAGE,
        "cost_usd": None,
    }


def error_body(code: str, error_type: str = "upstream_error", **extra: Any) -> dict[str, Any]:
    error = {"message": f"It failed: {code}.", "type": error_type, "param": None, "code": code, "request_id": "req_1"}
    return {"error": {**error, **extra}}


def render(
    chunks: list[dict[str, Any]], *, end: dict[str, Any] | None = None, error: dict[str, Any] | None = None
) -> bytes:
    framing = MessagesFraming("msg_req_1", "m", 1700000000)
    out = b"".join(framing.chunk(c) for c in chunks)
    return out + (framing.error(error) if error is not None else framing.end(end or summary("stop")))


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event, checking the framing: `event:` and `data:` lines, a blank line after."""
    assert raw.endswith(b"\n\n")
    out = []
    for block in raw.decode().split("\n\n")[:-1]:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == event.removeprefix("event: ")
        out.append((payload["type"], payload))
    return out


def accumulate(raw: bytes) -> ParsedMessage[None]:
    """The SDK's final Message from the events, each validated as its `RawMessageStreamEvent`."""
    snapshot: ParsedMessage[None] | None = None
    buffers: dict[int, bytes] = {}
    for _, data in events(raw):
        snapshot = accumulate_event(event=EVENTS.validate_python(data), current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    return snapshot


def sdk_client(status: int, **answer: Any) -> anthropic.Anthropic:
    """The anthropic client, answered `status` with `answer` (httpx2.Response's arguments), no socket."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, **answer)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return anthropic.Anthropic(api_key="k", base_url="http://relay.test", max_retries=0, http_client=http)


def sdk_stream(raw: bytes, texts: list[str] | None = None) -> Message:
    """The SDK's final Message of `raw` answered as a 200 event stream, its text pieces put in `texts`."""
    texts = [] if texts is None else texts
    client = sdk_client(200, headers={"content-type": "text/event-stream"}, content=raw)
    request: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with client, client.messages.stream(**request) as stream:
        for text in stream.text_stream:
            texts.append(text)
        return stream.get_final_message()


def text_of(message: ParsedMessage[None] | Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


# --- streamed answers ----------------------------------------------------------------------------------------


def test_split_text_is_one_text_block_with_the_stop_reason_and_usage() -> None:
    # GIVEN text in arbitrary pieces, then a normal end
    raw = render(
        [
            chunk(role="assistant", content=""),
            chunk(content="Hel"),
            chunk(content="lo, wor"),
            chunk("stop", content="ld"),
        ]
    )
    # THEN the events are Anthropic's, in order
    assert [name for name, _ in events(raw)] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    # AND the SDK's accumulator makes the whole text, the stop reason and the counts of them
    message = accumulate(raw)
    assert (message.id, message.model, text_of(message), message.stop_reason) == (
        "msg_req_1",
        "m",
        "Hello, world",
        "end_turn",
    )
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 7)
    assert message.usage.cache_read_input_tokens is None


def test_a_tool_call_with_split_arguments_is_a_tool_use_block_after_the_text() -> None:
    # GIVEN text, then a tool call whose arguments arrive in pieces, with cached prompt tokens
    chunks = [
        chunk(content="Let me check."),
        chunk(tool_calls=[call(0, "", id="call_1", name="get_weather")]),
        chunk(tool_calls=[call(0, '{"ci')]),
        chunk(tool_calls=[call(0, 'ty": "Par')]),
        chunk("tool_calls", tool_calls=[call(0, 'is"}')]),
    ]
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4}}
    raw = render(chunks, end=summary("tool_calls", usage))
    # WHEN the SDK accumulates it
    message = accumulate(raw)
    # THEN the text block is closed before the tool_use block, whose input is the parsed arguments
    text, use = message.content
    assert text.type == "text" and text.text == "Let me check."
    assert use.type == "tool_use" and (use.id, use.name, use.input) == ("call_1", "get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    # AND the input tokens are Anthropic's (without the cache reads, which are counted apart)
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (6, 4, 7)
    stops = [data["index"] for name, data in events(raw) if name == "content_block_stop"]
    assert stops == [0, 1]


def test_two_tool_calls_are_two_blocks_in_order() -> None:
    chunks = [
        chunk(tool_calls=[call(0, '{"city":', id="call_a", name="get_weather")]),
        chunk(tool_calls=[call(0, '"Paris"}')]),
        chunk(tool_calls=[call(1, '{"city": "Rome"}', id="call_b", name="get_weather")]),
    ]
    message = accumulate(render(chunks, end=summary("tool_calls")))
    assert [(b.id, b.input) for b in message.content if b.type == "tool_use"] == [
        ("call_a", {"city": "Paris"}),
        ("call_b", {"city": "Rome"}),
    ]


def test_length_is_max_tokens() -> None:
    message = accumulate(render([chunk("length", content="Once upon")], end=summary("length")))
    assert (text_of(message), message.stop_reason) == ("Once upon", "max_tokens")


def test_content_filter_is_refusal() -> None:
    message = accumulate(render([chunk("content_filter")], end=summary("content_filter")))
    assert (message.content, message.stop_reason) == ([], "refusal")


def test_a_refusal_is_the_text_with_the_refusal_stop_reason() -> None:
    message = accumulate(render([chunk(refusal="I can't help with that.")], end=summary("stop")))
    assert (text_of(message), message.stop_reason) == ("I can't help with that.", "refusal")


def test_reasoning_content_is_not_rendered() -> None:
    raw = render([chunk(reasoning_content="secret plan"), chunk("stop", content="Answer")])
    assert b"secret plan" not in raw
    assert [b.type for b in accumulate(raw).content] == ["text"]


def test_a_cancelled_stream_ends_without_a_stop_reason() -> None:
    # GIVEN a stream the client cancelled (a normal end, no finish reason)
    message = accumulate(render([chunk(content="Partial")], end=summary(None)))
    # THEN the Message has its text and no stop reason, as a stream cut short
    assert (text_of(message), message.stop_reason) == ("Partial", None)


def test_an_end_before_any_chunk_is_still_a_whole_message() -> None:
    raw = MessagesFraming("msg_req_1", "m", 1).end(summary("stop"))
    assert [name for name, _ in events(raw)] == ["message_start", "message_delta", "message_stop"]
    assert accumulate(raw).content == []


def test_message_start_is_sent_once_even_for_chunks_without_choices() -> None:
    framing = MessagesFraming("msg_req_1", "m", 1)
    first = framing.chunk({"id": "req_1", "object": "chat.completion.chunk", "choices": []})
    assert [name for name, _ in events(first)] == ["message_start"]
    assert framing.chunk({"id": "req_1", "object": "chat.completion.chunk", "choices": []}) == b""


def test_a_budget_cut_after_text_is_an_error_event_the_sdk_raises() -> None:
    # GIVEN text, then the relay's budget cut
    raw = render([chunk(content="Partial")], error=error_body("budget_exceeded", "rate_limit_error"))
    # THEN the last event is Anthropic's error, a rate limit carrying the relay's code, with nothing closed before it
    assert [name for name, _ in events(raw)][-2:] == ["content_block_delta", "error"]
    # AND the SDK raises it, with the code where it reads a stable cause
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_stream(raw, texts)
    assert texts == ["Partial"]
    assert (caught.value.type, caught.value.error_code) == ("rate_limit_error", "budget_exceeded")
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["code"] == "budget_exceeded" and body["request_id"] == "req_1"


def test_a_blocked_answer_is_the_content_filter_finish_then_the_error() -> None:
    # GIVEN released text, the gate's content_filter finish, then its content_filtered error
    blocked = error_body("content_filtered", "invalid_request_error", entity_types=["EMAIL"])
    raw = render([chunk(content="Write to "), chunk("content_filter")], error=blocked)
    rendered = events(raw)
    # THEN the stream ends with an invalid_request_error naming the code and the entity types, and no message_stop
    name, data = rendered[-1]
    assert name == "error"
    assert data["error"] == {
        "type": "invalid_request_error",
        "message": "It failed: content_filtered.",
        "code": "content_filtered",
        "details": {"error_code": "content_filtered"},
        "entity_types": ["EMAIL"],
    }
    assert "message_stop" not in [n for n, _ in rendered]
    ErrorResponse.model_validate({**data, "error": {k: data["error"][k] for k in ("type", "message")}})
    # AND the events before it accumulate to the released text
    assert text_of(accumulate(b"".join(_event_bytes(raw)[:-1]))) == "Write to "


def test_an_error_before_any_chunk_is_the_error_event_alone() -> None:
    # GIVEN a stream that fails before anything was rendered
    raw = MessagesFraming("msg_req_1", "m", 1).error(error_body("upstream_timeout"))
    # THEN it is one error event (the SDK raises on it wherever it comes, so no message_start is needed)
    assert [(name, data["error"]["type"]) for name, data in events(raw)] == [("error", "timeout_error")]
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_stream(raw)
    assert caught.value.error_code == "upstream_timeout"


@pytest.mark.parametrize(
    ("code", "relay_type", "anthropic_type"),
    [
        ("budget_exceeded", "rate_limit_error", "rate_limit_error"),
        ("upstream_rate_limited", "upstream_error", "overloaded_error"),
        ("upstream_timeout", "upstream_error", "timeout_error"),
        ("deadline", "upstream_error", "timeout_error"),
        ("content_filtered", "invalid_request_error", "invalid_request_error"),
        ("client_cancelled", "invalid_request_error", "invalid_request_error"),
        ("upstream_error", "upstream_error", "api_error"),
        ("incomplete", "upstream_error", "api_error"),
        ("ledger_unavailable", "upstream_error", "api_error"),
        ("guardrail_unavailable", "server_error", "api_error"),
        ("something_new", "invalid_request_error", "invalid_request_error"),
    ],
)
def test_stream_errors_have_anthropics_type(code: str, relay_type: str, anthropic_type: str) -> None:
    [(_, data)] = events(MessagesFraming("msg_req_1", "m", 1).error(error_body(code, relay_type)))
    assert (data["error"]["type"], data["error"]["code"]) == (anthropic_type, code)


def test_the_whole_stream_through_the_sdk_client_with_heartbeats() -> None:
    # GIVEN a stream with the framing's heartbeats and nudges between its events
    framing = MessagesFraming("msg_req_1", "m", 1)
    raw = b"".join(
        [
            framing.heartbeat,
            framing.chunk(chunk(content="Hi ")),
            framing.nudge,
            framing.heartbeat,
            framing.chunk(chunk(tool_calls=[call(0, '{"q": 1}', id="call_1", name="lookup")])),
            framing.end(summary("tool_calls")),
        ]
    )
    # WHEN the SDK client streams it
    final = sdk_stream(raw)
    # THEN the pings are skipped and the final Message is whole
    assert (text_of(final), final.stop_reason, final.usage.input_tokens) == ("Hi ", "tool_use", 10)
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [("lookup", {"q": 1})]


def test_framing_constants_and_protocol() -> None:
    framing: Framing = MessagesApi().framing("req_9", "m", 1)
    assert framing.media_type == "text/event-stream"
    assert framing.heartbeat == b'event: ping\ndata: {"type": "ping"}\n\n'
    assert framing.nudge == b"\n"
    assert accumulate(framing.end(summary("stop"))).id == "msg_req_9"


def test_the_message_id_is_the_request_id_after_msg() -> None:
    assert message_id("req_abc") == "msg_req_abc"
    assert message_id("my-job-7").removeprefix("msg_") == "my-job-7"


# --- stream: false -------------------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "req_1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "refusal": None, **message}, "finish_reason": finish}
        ],
        "usage": usage or USAGE,
    }


def test_an_answer_is_a_message_with_text_and_tool_use_blocks() -> None:
    # GIVEN an assembled completion with text and a tool call, and cached prompt tokens
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 3}}
    body = messages_answer(completion({"content": "Checking.", "tool_calls": [tool_call]}, "tool_calls", usage))
    # WHEN read as the SDK's Message
    message = Message.model_validate(body)
    # THEN it has the blocks, the stop reason and Anthropic's counts
    assert (message.id, message.type, message.role, message.model) == ("msg_req_1", "message", "assistant", "m")
    text, use = message.content
    assert text.type == "text" and text.text == "Checking."
    assert use.type == "tool_use" and (use.id, use.name, use.input) == ("call_1", "get_weather", {"city": "Oslo"})
    assert (message.stop_reason, message.stop_sequence) == ("tool_use", None)
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (7, 3, 7)


@pytest.mark.parametrize(
    ("message", "finish", "text", "stop"),
    [
        ({"content": "Done."}, "stop", "Done.", "end_turn"),
        ({"content": "Once upon"}, "length", "Once upon", "max_tokens"),
        ({"content": None}, "content_filter", "", "refusal"),
        ({"content": None, "refusal": "I can't."}, "stop", "I can't.", "refusal"),
        ({"content": ""}, "stop", "", "end_turn"),
    ],
)
def test_answers_stop_reasons_and_text(message: dict[str, Any], finish: str, text: str, stop: str) -> None:
    answer = Message.model_validate(messages_answer(completion(message, finish)))
    assert (text_of(answer), answer.stop_reason) == (text, stop)


def test_tool_arguments_that_are_not_an_object_are_an_empty_input() -> None:
    cut = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"city": "Os'}}
    answer = Message.model_validate(messages_answer(completion({"content": None, "tool_calls": [cut]}, "length")))
    assert [(b.type, b.input) for b in answer.content if b.type == "tool_use"] == [("tool_use", {})]


# --- HTTP errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "anthropic_type"),
    [
        (400, "invalid_request", "invalid_request_error"),
        (401, "invalid_api_key", "authentication_error"),
        (403, "model_not_allowed", "permission_error"),
        (404, "not_found", "not_found_error"),
        (409, "client_cancelled", "invalid_request_error"),
        (413, "payload_too_large", "request_too_large"),
        (429, "budget_exceeded", "rate_limit_error"),
        (500, "internal_error", "api_error"),
        (502, "upstream_error", "api_error"),
        (502, "upstream_rate_limited", "overloaded_error"),
        (503, "service_unavailable", "api_error"),
        (504, "upstream_timeout", "timeout_error"),
        (529, "overloaded", "overloaded_error"),
    ],
)
def test_http_errors_are_in_anthropics_shape(status: int, code: str, anthropic_type: str) -> None:
    # GIVEN the relay's OpenAI-shaped error body answered with `status`
    body = error_body(code, "whatever")
    # WHEN rendered for the Messages API
    rendered = messages_error(body, status)
    # THEN it is Anthropic's error shape with the type for the status, the relay's code and the request id
    assert rendered == {
        "type": "error",
        "error": {
            "type": anthropic_type,
            "message": f"It failed: {code}.",
            "code": code,
            "details": {"error_code": code},
        },
        "request_id": "req_1",
    }
    if anthropic_type != "request_too_large":  # documented by Anthropic, but not among the SDK's error objects
        ErrorResponse.model_validate(rendered)


def test_an_http_error_without_code_or_request_id_is_still_anthropics_shape() -> None:
    rendered = MessagesApi().error({"error": {"message": "Nope.", "type": "invalid_request_error"}}, 400)
    assert rendered == {"type": "error", "error": {"type": "invalid_request_error", "message": "Nope."}}


def test_the_sdk_raises_its_class_for_the_status_with_the_relays_code() -> None:
    # GIVEN a budget refusal answered 429 in the Messages shape
    body = messages_error(error_body("budget_exceeded", "rate_limit_error"), 429)
    # WHEN the SDK client gets it
    with sdk_client(429, json=body) as client, pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    # THEN it is a RateLimitError that tells the budget apart from a rate limit
    assert (caught.value.type, caught.value.error_code, caught.value.api_message) == (
        "rate_limit_error",
        "budget_exceeded",
        "It failed: budget_exceeded.",
    )


def _event_bytes(raw: bytes) -> list[bytes]:
    return [block + b"\n\n" for block in raw.split(b"\n\n")[:-1]]
