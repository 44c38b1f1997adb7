"""Resent upstream events are dropped where the upstream numbers them (an SSE `id:` line, a Responses
`sequence_number`), and never where it does not (chat-completion chunks, whose equal content is legitimate)."""

from __future__ import annotations

import json

from llm_relay.sse import SSEParser
from llm_relay.upstreams.openai import OpenAIDecoder
from llm_relay.upstreams.openai_responses import ResponsesEventDecoder
from llm_relay.upstreams.sequence import MAX_REMEMBERED, EventSequence


def test_numeric_ids_must_increase_and_a_repeat_or_a_step_back_is_counted() -> None:
    sequence = EventSequence()
    assert [sequence.admit(n) for n in (0, 1, 1, 2, 0, 3, "4", "4")] == [
        True,
        True,
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    assert sequence.repeats == 3


def test_other_ids_must_not_repeat_and_events_without_one_always_pass() -> None:
    sequence = EventSequence()
    assert [sequence.admit(n) for n in ("a", "b", "a", None, None, "c")] == [True, True, False, True, True, True]
    assert sequence.repeats == 1


def test_only_the_last_ids_are_remembered() -> None:
    sequence = EventSequence()
    for n in range(MAX_REMEMBERED + 1):
        assert sequence.admit(f"id-{n}")
    assert sequence.admit("id-0")  # forgotten: bounded memory over a long stream
    assert not sequence.admit(f"id-{MAX_REMEMBERED}")


def test_the_sse_parser_tells_an_events_own_id_from_the_last_event_id() -> None:
    events = SSEParser().feed(b"id: 7\ndata: a\n\ndata: b\n\n")
    assert [(e.id, e.id_given) for e in events] == [("7", True), ("7", False)]


def _chunk(text: str) -> str:
    return json.dumps(
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    )


def test_the_openai_decoder_drops_an_event_sent_again_with_its_id() -> None:
    decoder = OpenAIDecoder()
    raw = f"id: 1\ndata: {_chunk('tok')}\n\nid: 2\ndata: {_chunk(' tok')}\n\nid: 2\ndata: {_chunk(' tok')}\n\n"
    items = [item for item in decoder.feed(raw.encode()) if isinstance(item, dict)]
    assert [item["choices"][0]["delta"]["content"] for item in items] == ["tok", " tok"]
    assert decoder.repeats == 1


def test_unnumbered_chat_chunks_with_equal_content_all_pass() -> None:
    decoder = OpenAIDecoder()
    items = decoder.feed(f"data: {_chunk('tok')}\n\ndata: {_chunk('tok')}\n\n".encode())
    assert len(items) == 2 and decoder.repeats == 0


def test_the_responses_decoder_drops_an_event_whose_sequence_number_repeats() -> None:
    decoder = ResponsesEventDecoder("m", 0)

    def delta(n: int, text: str) -> str:
        event = {
            "type": "response.output_text.delta",
            "sequence_number": n,
            "item_id": "msg",
            "output_index": 0,
            "content_index": 0,
            "delta": text,
        }
        return f"event: response.output_text.delta\ndata: {json.dumps(event)}\n\n"

    items = decoder.feed((delta(3, "a") + delta(4, "b") + delta(4, "b") + delta(2, "x") + delta(5, "c")).encode())
    texts = [item["choices"][0]["delta"]["content"] for item in items if isinstance(item, dict)]
    assert texts == ["a", "b", "c"] and decoder.repeats == 2
