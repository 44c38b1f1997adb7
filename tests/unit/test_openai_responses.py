"""The `openai` kind's Responses pass-through: the request it sends to the provider's `/responses`, and the decoder
that turns the provider's events into the relay's chat chunks, each carrying the event it stands for."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from llm_relay.upstreams.base import END, Decoded, Ended, Failed
from llm_relay.upstreams.openai_responses import RAW_EVENTS, OpenAIResponsesDialect, ResponsesEventDecoder

MODEL, CREATED = "gpt-up", 1700000000
RESP, RS, MSG, FC1, FC2 = "resp_68a1c0ffee", "rs_68a1c0ffee01", "msg_68a1c0ffee02", "fc_68a1c0ffee03", "fc_68a1c0ffee04"


def _response(status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": RESP,
        "object": "response",
        "created_at": 1755000000,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-5-mini-2025-08-07",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "low", "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


REASONING = {"id": RS, "type": "reasoning", "summary": []}
PART = {"type": "output_text", "annotations": [], "logprobs": [], "text": "Grüße 🚀 from Paris."}
MESSAGE = {"id": MSG, "type": "message", "status": "completed", "content": [PART], "role": "assistant"}
CALL1 = {"id": FC1, "type": "function_call", "status": "completed", "arguments": '{"city":"Paris"}'}
CALL1 |= {"call_id": "call_Ab12", "name": "weather"}
CALL2 = {"id": FC2, "type": "function_call", "status": "completed", "arguments": '{"tz":"CET"}'}
CALL2 |= {"call_id": "call_Cd34", "name": "time"}
USAGE = {
    "input_tokens": 120,
    "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
    "output_tokens": 42,
    "output_tokens_details": {"reasoning_tokens": 16},
    "total_tokens": 162,
}


def _at(item_id: str, index: int, **fields: Any) -> dict[str, Any]:
    return {"item_id": item_id, "output_index": index, **fields}


def _recorded() -> list[dict[str, Any]]:
    """A stream as OpenAI sends it (without its sequence numbers): reasoning, a message, then two function calls."""
    text_at = {"content_index": 0}
    empty = {**PART, "text": ""}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response("in_progress", [])},
        {"type": "response.in_progress", "response": _response("in_progress", [])},
        {"type": "response.output_item.added", "output_index": 0, "item": REASONING},
        {"type": "response.output_item.done", "output_index": 0, "item": REASONING},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {**MESSAGE, "status": "in_progress"} | {"content": []},
        },
        {"type": "response.content_part.added", **_at(MSG, 1, **text_at), "part": empty},
    ]
    for delta in ("Grü", "ße 🚀", " from", " Paris."):
        events.append({"type": "response.output_text.delta", **_at(MSG, 1, **text_at), "delta": delta, "logprobs": []})
        events[-1]["obfuscation"] = "x7Q"
    events += [
        {"type": "response.output_text.done", **_at(MSG, 1, **text_at), "text": PART["text"], "logprobs": []},
        {"type": "response.content_part.done", **_at(MSG, 1, **text_at), "part": PART},
        {"type": "response.output_item.done", "output_index": 1, "item": MESSAGE},
    ]
    for index, call, pieces in ((2, CALL1, ['{"city":', '"Paris"}']), (3, CALL2, ['{"tz":"CET"}'])):
        opened = {**call, "status": "in_progress", "arguments": ""}
        events.append({"type": "response.output_item.added", "output_index": index, "item": opened})
        for piece in pieces:
            events.append({"type": "response.function_call_arguments.delta", **_at(call["id"], index), "delta": piece})
        done = {
            "type": "response.function_call_arguments.done",
            **_at(call["id"], index),
            "arguments": call["arguments"],
        }
        events += [done, {"type": "response.output_item.done", "output_index": index, "item": call}]
    events.append(
        {"type": "response.completed", "response": _response("completed", [REASONING, MESSAGE, CALL1, CALL2], USAGE)}
    )
    return events


RECORDED = _recorded()


def sse(events: list[dict[str, Any]]) -> bytes:
    """Events framed as OpenAI frames them, numbered from 0."""
    framed = [{**event, "sequence_number": n} for n, event in enumerate(events)]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n" for e in framed).encode()


def decode(*pieces: bytes) -> list[Decoded]:
    decoder = ResponsesEventDecoder(MODEL, CREATED)
    items = [item for piece in pieces for item in decoder.feed(piece)]
    return items + decoder.close()


def deltas(items: list[Decoded]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in items if isinstance(c, dict) and c["choices"]]


# --- the request ---------------------------------------------------------------------------------------------------


def test_the_request_is_the_clients_body_streamed_to_responses_storing_nothing() -> None:
    # GIVEN a validated Responses body, with fields of the provider's own
    body = {"model": "alias", "input": "hi", "stream": False, "store": None, "reasoning": {"effort": "low"}}

    async def key() -> str:
        return "sk-up"

    # WHEN the dialect builds the request for the route's model
    dialect = OpenAIResponsesDialect("https://api.example.test/v1/", key)
    request = anyio.run(dialect.request, body, "gpt-up", "req_1")
    # THEN it goes to `/responses` as an SSE request with the relay's id and the key
    assert dialect.kind == "openai" and request.url == "https://api.example.test/v1/responses"
    assert request.headers["accept"] == "text/event-stream" and request.headers["x-request-id"] == "req_1"
    assert request.headers["authorization"] == "Bearer sk-up" and "sk-up" not in repr(request)
    # AND the body is the client's, with the route's model, streamed, stored nowhere
    sent = json.loads(request.content)
    assert sent == {"model": "gpt-up", "input": "hi", "stream": True, "store": False, "reasoning": {"effort": "low"}}
    assert body["model"] == "alias"  # the caller's body is left as it was


def test_the_dialects_decoder_fills_the_routes_model() -> None:
    decoder = OpenAIResponsesDialect("http://up.test/v1").decoder("m-route", 7)
    first = decoder.feed(sse(RECORDED[:1]))[0]
    assert isinstance(first, dict) and (first["model"], first["created"]) == ("m-route", 7)


# --- decoding a whole stream ---------------------------------------------------------------------------------------


def test_each_event_is_one_chunk_carrying_it_then_the_usage_and_the_end() -> None:
    # WHEN the recorded stream is decoded
    items = decode(sse(RECORDED))
    # THEN every event is carried, in order, by exactly one chunk, each with its own sequence number intact
    carried = [event for item in items if isinstance(item, dict) for event in item.get(RAW_EVENTS, [])]
    assert [e["type"] for e in carried] == [e["type"] for e in RECORDED]
    assert [e["sequence_number"] for e in carried] == list(range(len(RECORDED)))
    assert all(len(item[RAW_EVENTS]) == 1 for item in items if isinstance(item, dict) and RAW_EVENTS in item)
    # AND the stream ends with the finish chunk (a function call was made), the provider's counts, then END
    finish, usage, end = items[-3:]
    assert isinstance(finish, dict) and finish["choices"][0]["finish_reason"] == "tool_calls"
    assert finish[RAW_EVENTS][0]["type"] == "response.completed"
    assert isinstance(usage, dict) and RAW_EVENTS not in usage and usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 120,
        "completion_tokens": 42,
        "total_tokens": 162,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    assert end is END and len(items) == len(RECORDED) + 2


def test_the_chat_deltas_are_the_text_and_the_calls_in_order() -> None:
    # THEN text deltas are content, each call opens with its id and name, and its arguments follow in pieces
    assert deltas(decode(sse(RECORDED))) == [
        {"content": "Grü"},
        {"content": "ße 🚀"},
        {"content": " from"},
        {"content": " Paris."},
        {
            "tool_calls": [
                {"index": 0, "id": "call_Ab12", "type": "function", "function": {"name": "weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {"index": 1, "id": "call_Cd34", "type": "function", "function": {"name": "time", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"tz":"CET"}'}}]},
        {},  # the finish
    ]


def test_every_split_of_the_stream_decodes_to_the_same_items() -> None:
    # GIVEN the recorded stream's bytes (multi-byte characters included)
    raw = sse(RECORDED)
    whole = decode(raw)
    # WHEN cut in two at every byte, and fed a byte at a time
    for cut in range(1, len(raw)):
        assert decode(raw[:cut], raw[cut:]) == whole, cut
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == whole


def test_crlf_line_ends_and_keep_alive_comments_change_nothing() -> None:
    raw = sse(RECORDED)
    assert decode(b": keep-alive\r\n\r\n" + raw.replace(b"\n", b"\r\n")) == decode(raw)


def test_reasoning_and_refusal_deltas() -> None:
    events = [
        {"type": "response.reasoning_summary_text.delta", **_at(RS, 0), "summary_index": 0, "delta": "Plan."},
        {"type": "response.reasoning_text.delta", **_at(RS, 0), "content_index": 0, "delta": "Think"},
        {"type": "response.refusal.delta", **_at(MSG, 1), "content_index": 0, "delta": "I can't."},
        {"type": "response.output_text.delta", **_at(MSG, 1), "content_index": 0, "delta": ""},
    ]
    items = decode(sse(events))
    assert deltas(items) == [{"reasoning_content": "Plan."}, {"reasoning_content": "Think"}, {"refusal": "I can't."}]
    assert isinstance(items[-1], dict) and items[-1]["choices"] == []  # an empty delta is carried, adds nothing


def test_arguments_before_their_item_and_by_output_index_find_their_call() -> None:
    # GIVEN argument deltas naming their call only by output index, and one before any item was added
    events: list[dict[str, Any]] = [
        {"type": "response.function_call_arguments.delta", "output_index": 5, "delta": "{"},
        {"type": "response.output_item.added", "output_index": 6, "item": {**CALL1, "id": "fc_b"}},
        {"type": "response.function_call_arguments.delta", "output_index": 6, "delta": "}"},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_b", "delta": "x"},
    ]
    # THEN each call keeps one index, in the order the calls were first seen
    calls = [d["tool_calls"][0]["index"] for d in deltas(decode(sse(events)))]
    assert calls == [0, 1, 1, 1]


def test_a_completed_text_answer_finishes_stop() -> None:
    events = [RECORDED[0], {"type": "response.completed", "response": _response("completed", [MESSAGE], USAGE)}]
    finish = decode(sse(events))[1]
    assert isinstance(finish, dict) and finish["choices"][0]["finish_reason"] == "stop"


# --- endings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "finish"), [("max_output_tokens", "length"), ("content_filter", "content_filter"), (None, "length")]
)
def test_an_incomplete_response_finishes_with_its_reason_then_the_usage(reason: str | None, finish: str) -> None:
    response = {**_response("incomplete", [MESSAGE], USAGE), "incomplete_details": {"reason": reason}}
    items = decode(sse([RECORDED[0], {"type": "response.incomplete", "response": response}]))
    finished, usage, end = items[1:]
    assert isinstance(finished, dict) and finished["choices"][0]["finish_reason"] == finish
    assert finished[RAW_EVENTS][0]["type"] == "response.incomplete"
    assert isinstance(usage, dict) and usage["usage"]["completion_tokens"] == 42 and end is END


def test_a_failed_response_is_the_providers_message_after_its_counts() -> None:
    # GIVEN the provider's failed response, with what it had counted
    failed = _response("failed", [], {**USAGE, "output_tokens": 3})
    failed["error"] = {"code": "server_error", "message": "The model crashed."}
    items = decode(sse([RECORDED[0], {"type": "response.failed", "response": failed}]))
    # THEN the counts are metered, the stream fails with the provider's message, and the event is not carried
    usage, failure = items[1:]
    assert isinstance(usage, dict) and usage["usage"]["completion_tokens"] == 3 and RAW_EVENTS not in usage
    assert failure == Failed("Upstream error: The model crashed.")


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "error", "code": "rate_limit_exceeded", "message": "Slow down.", "param": None}, "Slow down."),
        ({"type": "error", "error": {"message": "Nested."}}, "Nested."),
        ({"type": "error"}, "unknown"),
        ({"type": "response.failed", "response": {"error": None}}, "unknown"),
    ],
)
def test_an_error_event_fails_the_stream(event: dict[str, Any], message: str) -> None:
    assert decode(sse([event])) == [Failed(f"Upstream error: {message}")]


@pytest.mark.parametrize(
    "data",
    ["{not json", "[1, 2]", '"text"', '{"no": "type"}', '{"type": 5}', '{"type": "a\\nb"}', "[" * 5000 + "]" * 5000],
)
def test_what_is_not_a_responses_event_is_malformed(data: str) -> None:
    items = decode(f"data: {data}\n\n".encode(), sse(RECORDED[:1]))
    assert items == [Failed("Upstream sent a malformed event.")]  # and nothing is read after it


def test_a_line_too_long_fails_the_stream() -> None:
    assert decode(b"data: " + b"x" * (1024 * 1024 + 1)) == [Failed("Upstream sent a malformed event (line too long).")]


def test_done_markers_and_unknown_events_do_not_break_the_stream() -> None:
    # GIVEN a `[DONE]` a compatible server sends, and an event type this relay does not know
    unknown = {"type": "response.future_thing.added", "item_id": MSG, "anything": [1, {"x": None}]}
    raw = b"data: [DONE]\n\n" + sse([unknown]) + b"data: [DONE]\n\n"
    # THEN the unknown event is carried by a chunk without choices, and the marker is nothing
    items = decode(raw)
    assert len(items) == 1 and isinstance(items[0], dict)
    assert items[0]["choices"] == [] and items[0][RAW_EVENTS] == [{**unknown, "sequence_number": 0}]


def test_nothing_is_decoded_after_the_end() -> None:
    decoder = ResponsesEventDecoder(MODEL, CREATED)
    assert decoder.feed(sse(RECORDED))[-1] is END
    assert decoder.feed(sse(RECORDED[:2])) == [] and decoder.close() == []


def test_a_usage_without_an_output_count_is_left_to_the_relays_estimate() -> None:
    for usage, expected in (({"input_tokens": 5}, None), ({"output_tokens": 2}, {"completion_tokens": 2})):
        items = decode(sse([{"type": "response.completed", "response": _response("completed", [], usage)}]))
        counted = [item["usage"] for item in items if isinstance(item, dict) and item.get("usage")]
        assert counted == ([] if expected is None else [{**expected, "total_tokens": 2}])
    assert isinstance(items[-1], Ended)


VALUES: list[Any] = [None, 1, "x", [], {}, [1], {"a": 1}, True, -5, 1.5]


@pytest.mark.parametrize("value", VALUES)
def test_the_decoder_never_raises_on_fields_of_unexpected_types(value: Any) -> None:
    shapes = [
        {"type": "response.output_text.delta", "delta": value},
        {"type": "response.function_call_arguments.delta", "delta": "x", "item_id": value, "output_index": value},
        {"type": "response.output_item.added", "item": value},
        {"type": "response.output_item.added", "item": {"type": "function_call", "call_id": value, "name": value}},
        {"type": "response.completed", "response": value},
        {"type": "response.completed", "response": {"output": value, "usage": value}},
        {"type": "response.completed", "response": {"usage": {"input_tokens": value, "output_tokens": value}}},
        {"type": "response.incomplete", "response": {"incomplete_details": value}},
        {"type": "response.failed", "response": {"error": value, "usage": value}},
        {"type": "error", "message": value, "error": value},
    ]
    for event in shapes:
        items = decode(sse([event]))
        assert all(isinstance(item, dict | Ended | Failed) for item in items)


def test_the_provider_is_not_sent_the_relays_item_ids_nor_reasoning_items() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "Hi"},
            {"type": "reasoning", "id": "rs_abc_0", "summary": []},
            {"type": "function_call", "id": "fc_abc_1", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        ],
        "metadata": {"team": "a"},
    }
    prepared = anyio.run(OpenAIResponsesDialect("http://up/v1").request, body, "m2", "req_1")
    sent = json.loads(prepared.content)
    assert sent["input"] == [
        {"role": "user", "content": "Hi"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    assert (sent["model"], sent["stream"], sent["store"], "metadata" in sent) == ("m2", True, False, False)
