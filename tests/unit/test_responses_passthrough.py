"""The Responses framing's pass-through: a provider's own events (decoded by the `openai` kind's Responses decoder,
carried on the relay's chunks) written as the relay's, and the stream ended by the relay when the provider did not
end it; read back with the official openai SDK (its event types, its accumulator, its client over
`httpx2.MockTransport`)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from llm_relay.apis.responses_events import ResponsesFraming
from llm_relay.upstreams.base import Failed
from llm_relay.upstreams.openai_responses import RAW_EVENTS
from tests.unit.test_openai_responses import FC1, FC2, MSG, RECORDED, RESP, RS, decode, sse
from tests.unit.test_responses_events import CREATED, RID, accumulate, chunk, error_body, events_of, sdk_client, summary

CLIENT_MODEL = "client-model"
PROVIDER_IDS = (RESP, RS, MSG, FC1, FC2)
RELAY_IDS = {RS: "rs_0123abcd_0", MSG: "msg_0123abcd_1", FC1: "fc_0123abcd_2", FC2: "fc_0123abcd_3"}
FIRST_CALL_DELTA = next(i for i, e in enumerate(RECORDED) if e["type"] == "response.function_call_arguments.delta")


def relayed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chunks the relay hands the framing for these provider events: decoded, its id in each, usage stripped
    (a usage-only chunk is not relayed), up to the end or a failure."""
    chunks = []
    for item in decode(sse(events)):
        if not isinstance(item, dict):
            break
        if item["choices"] or RAW_EVENTS in item:
            item.pop("usage", None)
            chunks.append({**item, "id": RID})
    return chunks


def frame(events: list[dict[str, Any]], framing: ResponsesFraming | None = None) -> tuple[ResponsesFraming, bytes]:
    framing = framing or ResponsesFraming(RID, CLIENT_MODEL, CREATED)
    return framing, b"".join(framing.chunk(c) for c in relayed(events))


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def back_to_the_providers(event: dict[str, Any]) -> dict[str, Any]:
    """An event written by the relay with the provider's names put back, and without its numbering."""
    text = json.dumps({k: v for k, v in event.items() if k != "sequence_number"})
    for provider, relay in RELAY_IDS.items():
        text = text.replace(f'"{relay}"', f'"{provider}"')
    text = text.replace(f'"id": "{RID}"', f'"id": "{RESP}"')
    restored: dict[str, Any] = json.loads(text.replace(f'"{CLIENT_MODEL}"', '"gpt-5-mini-2025-08-07"'))
    return restored


# --- a stream the provider ends --------------------------------------------------------------------------------------


def test_the_providers_events_go_out_under_the_relays_ids_numbering_and_model() -> None:
    # GIVEN the provider's recorded stream, relayed, then the relay's end
    framing, wire = frame(RECORDED)
    wire += framing.end(summary("tool_calls"))
    events = events_of(wire)  # numbered 0, 1, 2... by the relay; `event:` names each one's type
    # THEN the events are the provider's, in its order, and the end added none
    assert types(events) == types(RECORDED)
    # AND every response is the relay's response id and the client's model, every item id the relay's own
    responses = [e["response"] for e in events if "response" in e]
    assert {(r["id"], r["model"]) for r in responses} == {(RID, CLIENT_MODEL)}
    item_ids = {e.get("item_id") or e["item"]["id"] for e in events if "item_id" in e or "item" in e}
    assert item_ids == set(RELAY_IDS.values())
    assert [o["id"] for o in responses[-1]["output"]] == list(RELAY_IDS.values())
    # AND no provider id and no internal key is on the wire; the calls keep the model's call ids
    assert not [pid for pid in PROVIDER_IDS if pid.encode() in wire] and RAW_EVENTS.encode() not in wire
    assert b'"call_Ab12"' in wire and b'"call_Cd34"' in wire
    # AND nothing else was changed
    assert [back_to_the_providers(e) for e in events] == RECORDED
    accumulate(events)  # each one the SDK's own type, taken by its accumulator


def test_the_sdk_client_reads_the_text_the_calls_and_the_usage() -> None:
    # GIVEN the relayed stream's exact bytes
    framing, wire = frame(RECORDED)
    wire += framing.end(summary("tool_calls"))
    # WHEN the openai SDK's client streams them
    with sdk_client(wire).responses.stream(model=CLIENT_MODEL, input="hi") as stream:
        seen = [event.delta for event in stream if event.type == "response.output_text.delta"]
        response = stream.get_final_response()
    # THEN it gets the deltas, the whole text, both calls with their arguments, and the provider's usage
    assert seen == ["Grü", "ße 🚀", " from", " Paris."]
    assert (response.id, response.status, response.model) == (RID, "completed", CLIENT_MODEL)
    assert response.output_text == "Grüße 🚀 from Paris."
    assert [o.type for o in response.output] == ["reasoning", "message", "function_call", "function_call"]
    calls = [(o.name, o.arguments, o.call_id, o.id) for o in response.output if o.type == "function_call"]
    assert calls == [
        ("weather", '{"city":"Paris"}', "call_Ab12", "fc_0123abcd_2"),
        ("time", '{"tz":"CET"}', "call_Cd34", "fc_0123abcd_3"),
    ]
    usage = response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (120, 42, 162)
    assert (usage.input_tokens_details.cached_tokens, usage.output_tokens_details.reasoning_tokens) == (64, 16)


def test_after_the_providers_terminal_event_the_relay_writes_nothing() -> None:
    framing, wire = frame(RECORDED)
    assert wire.rstrip().endswith(b"}") and b"event: response.completed" in wire
    assert framing.end(summary("tool_calls")) == b""
    assert framing.error(error_body("ledger_unavailable")) == b""  # a second terminal event would break clients
    assert framing.chunk(chunk({"content": "late"})) == b""


# --- a stream the relay ends -----------------------------------------------------------------------------------------


def test_a_cancel_mid_text_closes_the_message_and_ends_the_response_cancelled() -> None:
    # GIVEN the stream relayed up to its second text delta
    cut = next(i for i, e in enumerate(RECORDED) if e.get("delta") == "ße 🚀") + 1
    framing, wire = frame(RECORDED[:cut])
    # WHEN the client cancels
    events = events_of(wire + framing.end(summary(None, "client_cancelled")))
    # THEN the relay closes the open part and item with the text so far, then ends the response as cancelled
    tail = events[cut:]
    assert types(tail) == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert tail[0]["text"] == "Grüße 🚀" and tail[0]["item_id"] == RELAY_IDS[MSG]
    assert tail[2]["item"]["status"] == "incomplete"
    response = tail[-1]["response"]
    assert (response["id"], response["model"], response["status"]) == (RID, CLIENT_MODEL, "cancelled")
    assert [o["id"] for o in response["output"]] == [RELAY_IDS[RS], RELAY_IDS[MSG]]
    assert response["output"][1]["content"][0]["text"] == "Grüße 🚀"
    assert response["usage"]["output_tokens"] == 7  # the relay's count (its summary), not the provider's
    accumulate(events)


def test_a_budget_cut_mid_call_fails_the_response_with_the_call_so_far() -> None:
    # GIVEN the stream relayed up to the first piece of the first call's arguments
    framing, wire = frame(RECORDED[: FIRST_CALL_DELTA + 1])
    # WHEN the relay cuts it for the budget
    budget = error_body("budget_exceeded", "The key's budget is spent.", "rate_limit_error")
    wire += framing.error(budget)
    events = events_of(wire)
    # THEN the call is closed with its arguments so far, then the response fails with the output so far
    tail = events[FIRST_CALL_DELTA + 1 :]
    assert types(tail) == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.failed",
        "error",
    ]
    assert (tail[0]["item_id"], tail[0]["arguments"]) == (RELAY_IDS[FC1], '{"city":')
    failed = tail[2]["response"]
    assert (failed["id"], failed["status"], failed["error"]["code"]) == (RID, "failed", "budget_exceeded")
    assert [o["id"] for o in failed["output"]] == [RELAY_IDS[RS], RELAY_IDS[MSG], RELAY_IDS[FC1]]
    # AND the SDK's client sees the failure and raises the relay's error
    with pytest.raises(openai.APIError) as caught, sdk_client(wire).responses.stream(model="m", input="x") as stream:
        list(stream)
    assert caught.value.code == "budget_exceeded"


@pytest.mark.parametrize("cut", range(1, len(RECORDED)))
@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_wherever_the_relay_ends_the_stream_every_open_thing_is_closed_once(cut: int, ending: str) -> None:
    # GIVEN the provider's stream relayed up to any event before its own end
    framing, wire = frame(RECORDED[:cut])
    # WHEN the relay ends it
    if ending == "cancelled":
        wire += framing.end(summary(None, "client_cancelled"))
    else:
        wire += framing.error(error_body("upstream_timeout"))
    events = events_of(wire)
    # THEN every item added is done once, every part added is done once, every text done at most once
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"]["id"] for e in events if e["type"] == "response.output_item.done"]
    assert sorted(added) == sorted(done) and len(set(done)) == len(done)
    parts = [(e["item_id"], e["content_index"]) for e in events if e["type"] == "response.content_part.added"]
    parts_done = [(e["item_id"], e["content_index"]) for e in events if e["type"] == "response.content_part.done"]
    assert parts == parts_done
    texts = [e["item_id"] for e in events if e["type"].endswith(("text.done", "arguments.done"))]
    assert len(texts) == len(set(texts))
    # AND the response ends once, with everything the provider's events built, and the SDK takes every event
    terminal = "response.incomplete" if ending == "cancelled" else "response.failed"
    assert [e["type"] for e in events].count(terminal) == 1
    assert [o["id"] for o in events[-1 if ending == "cancelled" else -2]["response"]["output"]] == added
    accumulate(events)


# --- what is never written ---------------------------------------------------------------------------------------


def test_the_providers_failure_events_are_not_written_the_relays_are() -> None:
    # GIVEN a stream under way WHEN chunks carry the provider's `error` and `response.failed` events
    framing, wire = frame(RECORDED[:3])
    failed = {"type": "response.failed", "response": {**RECORDED[0]["response"], "status": "failed"}}
    provider_error = {"type": "error", "code": "server_error", "message": "boom", "sequence_number": 9}
    assert framing.chunk({**chunk(None), RAW_EVENTS: [provider_error, failed]}) == b""
    # THEN only the relay's own failure is written, numbered on from the relayed events
    events = events_of(wire + framing.error(error_body("upstream_error", "Upstream error: boom")))
    assert types(events)[3:] == ["response.output_item.done", "response.failed", "error"]  # the open reasoning item
    assert events[-1]["code"] == "upstream_error" and RESP.encode() not in wire


def test_once_the_provider_streams_a_chunk_without_events_adds_nothing() -> None:
    framing, _ = frame(RECORDED[:6])
    assert framing.chunk(chunk({"content": "synthesized?"})) == b""
    assert framing.chunk(chunk(None)) == b""


def test_a_provider_stream_without_its_created_event_gets_the_relays() -> None:
    # GIVEN a provider whose first event is an item, not `response.created`
    framing, wire = frame(RECORDED[2:8])
    events = events_of(wire + framing.end(summary("length")))
    # THEN the relay's `response.created` and `response.in_progress` come first, then the provider's events
    assert types(events)[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["id"] == RID
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    accumulate(events)


def test_a_second_created_event_is_not_written() -> None:
    _, wire = frame([RECORDED[0], RECORDED[0], RECORDED[1]])
    assert types(events_of(wire)) == ["response.created", "response.in_progress"]


def test_the_decoders_failure_after_relayed_events_is_the_relays_failure_with_the_output() -> None:
    # GIVEN the provider's stream, then its `response.failed`
    failed = {"type": "response.failed", "response": {**RECORDED[0]["response"], "status": "failed", "error": None}}
    stream = [*RECORDED[:8], failed]
    assert decode(sse(stream))[-1] == Failed("Upstream error: unknown")
    framing, wire = frame(stream)
    # WHEN the relay ends it as the upstream's error
    events = events_of(wire + framing.error(error_body("upstream_error", "Upstream error: unknown")))
    # THEN the failed response is the relay's, with the text so far
    assert types(events)[-3:] == ["response.output_item.done", "response.failed", "error"]
    assert events[-2]["response"]["output"][1]["content"][0]["text"] == "Grüße 🚀"
