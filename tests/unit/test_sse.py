"""SSEParser: the same bytes, split anywhere, parse to the same events."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from typing import Any

import pytest

from llm_relay.sse import SSEEvent, SSEParser


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9xKq2",
        "object": "chat.completion.chunk",
        "created": 1718000000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


ROLE = _dumps(_chunk({"role": "assistant", "content": "", "refusal": None}))
HELLO = _dumps(_chunk({"content": "Héllo, wörld — 日本語 🚀"}))
TOOL = _dumps(
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Zürich"}'},
                }
            ]
        }
    )
)
FINISH = _dumps(_chunk({}, finish_reason="stop"))
USAGE = _dumps(
    {
        "id": "chatcmpl-9xKq2",
        "object": "chat.completion.chunk",
        "created": 1718000000,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
)


def _stream(eol: str) -> bytes:
    """A realistic OpenAI stream with keep-alives, a named event, an id and a multi-line data event."""
    lines = [
        ": ping",
        "",
        f"data: {ROLE}",
        "",
        f"data: {HELLO}",
        "",
        ": keep-alive",
        f"data: {TOOL}",
        "",
        "event: notice",
        "id: evt-7",
        "data:first line",
        "data: second line",
        "",
        f"data: {FINISH}",
        "",
        f"data: {USAGE}",
        "",
        "data: [DONE]",
        "",
    ]
    return eol.join(lines).encode() + eol.encode()


EXPECTED = [
    SSEEvent(ROLE),
    SSEEvent(HELLO),
    SSEEvent(TOOL),
    SSEEvent("first line\nsecond line", event="notice", id="evt-7"),
    SSEEvent(FINISH, id="evt-7"),  # the last event id persists, as in the spec
    SSEEvent(USAGE, id="evt-7"),
    SSEEvent("[DONE]", id="evt-7"),
]
EXPECTED_COMMENTS = 2

# A short stream mixing every line ending, for the exhaustive two-cut test.
MIXED = b": p\r\ndata: a\rdata: \xc3\xa9\xf0\x9f\x9a\x80\n\r\nevent: e\r\rdata: [DONE]\r\n\n"
MIXED_EXPECTED = [SSEEvent("a\né🚀"), SSEEvent("[DONE]")]

ENDINGS = pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])


def _parse(pieces: Iterable[bytes]) -> tuple[list[SSEEvent], int]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    events.extend(parser.flush())
    return events, parser.comments


def _split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- the central property ----------------------------------------------------------------------------


@ENDINGS
def test_whole_stream_in_one_feed(eol: str) -> None:
    # GIVEN a realistic stream with the given line ending
    data = _stream(eol)
    # WHEN it is fed in one read
    events, comments = _parse([data])
    # THEN every event comes out exactly, and both comments are counted
    assert events == EXPECTED
    assert comments == EXPECTED_COMMENTS


@ENDINGS
def test_every_single_split_point_gives_identical_events(eol: str) -> None:
    # GIVEN the stream and every possible byte boundary in it
    data = _stream(eol)
    for cut in range(len(data) + 1):
        # WHEN it is fed in two reads split at that boundary
        events, comments = _parse(_split(data, [cut]))
        # THEN the result is the same as in one read
        assert (events, comments) == (EXPECTED, EXPECTED_COMMENTS), f"split at byte {cut}"


def test_every_pair_of_split_points_in_mixed_endings_gives_identical_events() -> None:
    # GIVEN a short stream mixing LF, CRLF and CR, with a 2-byte and a 4-byte UTF-8 character
    assert _parse([MIXED]) == (MIXED_EXPECTED, 1)
    for first in range(len(MIXED) + 1):
        for second in range(first, len(MIXED) + 1):
            # WHEN it is fed in three reads cut at any two boundaries (empty reads included)
            result = _parse(_split(MIXED, [first, second]))
            # THEN the result never changes
            assert result == (MIXED_EXPECTED, 1), f"cuts at {first}, {second}"


@ENDINGS
def test_one_byte_at_a_time_gives_identical_events(eol: str) -> None:
    # GIVEN the stream
    data = _stream(eol)
    # WHEN it is fed one byte per read
    events, comments = _parse(data[i : i + 1] for i in range(len(data)))
    # THEN the result is the same as in one read
    assert events == EXPECTED
    assert comments == EXPECTED_COMMENTS


@ENDINGS
def test_random_splits_give_identical_events(eol: str) -> None:
    # GIVEN the stream and a seeded RNG
    data = _stream(eol)
    rng = random.Random(20240611)
    for trial in range(150):
        # WHEN it is fed in a random number of reads at random boundaries
        cuts = rng.sample(range(len(data) + 1), rng.randint(1, 40))
        events, comments = _parse(_split(data, cuts))
        # THEN the result is the same as in one read
        assert (events, comments) == (EXPECTED, EXPECTED_COMMENTS), f"trial {trial}, cuts {sorted(cuts)}"


@ENDINGS
def test_one_event_or_one_line_per_read_gives_identical_events(eol: str) -> None:
    # GIVEN the stream cut after every blank line (a provider's usual write: one whole event per read, which
    # the parser takes on a short path when it is a lone `data:` event) and, separately, after every line
    data = _stream(eol)
    end = eol.encode()
    events_alone = [piece + end + end for piece in data.split(end + end) if piece]
    lines_alone = [piece + end for piece in data.split(end)][:-1]
    assert b"".join(events_alone) == data and b"".join(lines_alone) == data
    for pieces in (events_alone, lines_alone):
        # WHEN it is fed in those reads
        events, comments = _parse(pieces)
        # THEN the result is the same as in one read: a named event's type, an id, a pending data line
        # or a comment before a whole event in the next read all count
        assert (events, comments) == (EXPECTED, EXPECTED_COMMENTS)


def test_a_whole_data_event_after_a_field_of_its_own_keeps_that_field() -> None:
    # GIVEN reads where an event's type, its id, or a first data line arrive before a read holding a whole
    # `data:` event
    cases = [
        ([b"event: delta\n", b"data: x\n\n"], [SSEEvent("x", event="delta")]),
        ([b"id: 9\n", b"data: x\n\n", b"data: y\n\n"], [SSEEvent("x", id="9"), SSEEvent("y", id="9")]),
        ([b"data: a\n", b"data: x\n\n"], [SSEEvent("a\nx")]),
        ([b"data: a\r", b"\ndata: x\n\n"], [SSEEvent("a\nx")]),
        ([b"\xef\xbb\xbfdata: x\n\n", b"data: \xff\n\n"], [SSEEvent("x"), SSEEvent("\ufffd")]),
    ]
    for pieces, expected in cases:
        # WHEN they are fed
        events, _ = _parse(pieces)
        # THEN the event carries what came before it, as if all were one read
        assert events == expected == _parse([b"".join(pieces)])[0], pieces


# --- line endings --------------------------------------------------------------------------------------


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    # GIVEN a data line whose CRLF is split across two reads, followed by another data line
    parser = SSEParser()
    # WHEN the CR arrives at the end of one read and the LF at the start of the next
    first = parser.feed(b"data: a\r")
    second = parser.feed(b"\ndata: b\r\n")
    third = parser.feed(b"\r\n")
    # THEN the LF is not a second (blank) line: both data lines belong to one event
    assert first == []
    assert second == []
    assert third == [SSEEvent("a\nb")]


def test_lone_lf_after_split_crlf_does_not_dispatch() -> None:
    # GIVEN a read ending in CR
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    # WHEN the next read is only the LF of that CRLF
    # THEN nothing is dispatched (it is not a blank line)
    assert parser.feed(b"\n") == []
    # AND a real blank line then dispatches
    assert parser.feed(b"\r\n") == [SSEEvent("x")]


def test_empty_read_between_cr_and_lf_keeps_the_pending_cr() -> None:
    # GIVEN a read ending in CR, then an empty read
    parser = SSEParser()
    parser.feed(b"data: x\r")
    assert parser.feed(b"") == []
    # WHEN the LF arrives
    # THEN it still completes the CRLF (no dispatch)
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [SSEEvent("x")]


def test_cr_followed_by_cr_in_next_read_is_a_blank_line() -> None:
    # GIVEN a read ending in CR
    parser = SSEParser()
    parser.feed(b"data: x\r")
    # WHEN the next read starts with another CR
    # THEN that CR is a blank line and dispatches
    assert parser.feed(b"\r") == [SSEEvent("x")]


def test_cr_only_line_endings() -> None:
    # GIVEN a stream using bare CR
    # WHEN it is parsed
    events, _ = _parse([b"data: a\rdata: b\r\rdata: [DONE]\r\r"])
    # THEN CR ends lines and a lone CR dispatches
    assert events == [SSEEvent("a\nb"), SSEEvent("[DONE]")]


# --- fields --------------------------------------------------------------------------------------------


def test_comments_are_counted_and_never_dispatched() -> None:
    # GIVEN keep-alive comments, an empty comment and a comment inside an event
    parser = SSEParser()
    # WHEN they are parsed
    events = parser.feed(b": ping\n\n:\n\ndata: a\n: inside\ndata: b\n\n")
    # THEN only the data event comes out, its lines joined across the comment
    assert events == [SSEEvent("a\nb")]
    assert parser.comments == 3


def test_comment_only_stream_dispatches_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b": ping\n\n" * 5) == []
    assert parser.flush() == []
    assert parser.comments == 5


def test_multiline_data_is_joined_with_lf() -> None:
    events, _ = _parse([b'data: {\ndata:   "a": 1\ndata: }\n\n'])
    assert events == [SSEEvent('{\n  "a": 1\n}')]


def test_event_and_id_fields() -> None:
    # GIVEN an event with a type and an id, then a plain one
    parser = SSEParser()
    # WHEN they are parsed
    events = parser.feed(b'event: error\nid: 42\ndata: {"error":{"message":"boom"}}\n\ndata: next\n\n')
    # THEN the first carries both; the type resets after dispatch, the id persists
    assert events == [
        SSEEvent('{"error":{"message":"boom"}}', event="error", id="42"),
        SSEEvent("next", event="message", id="42"),
    ]


def test_id_containing_nul_is_ignored() -> None:
    events, _ = _parse([b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"])
    assert events == [SSEEvent("a", id="1"), SSEEvent("b", id="1")]


def test_empty_event_field_means_message() -> None:
    events, _ = _parse([b"event:\ndata: a\n\n"])
    assert events == [SSEEvent("a", event="message")]


def test_field_without_space_after_colon() -> None:
    events, _ = _parse([b'event:update\ndata:{"x":1}\n\n'])
    assert events == [SSEEvent('{"x":1}', event="update")]


def test_only_one_space_after_colon_is_dropped() -> None:
    events, _ = _parse([b"data:  two spaces\ndata:\ttab\n\n"])
    assert events == [SSEEvent(" two spaces\n\ttab")]


def test_value_may_contain_colons() -> None:
    events, _ = _parse([b"data: a: b:c\n\n"])
    assert events == [SSEEvent("a: b:c")]


def test_data_without_colon_is_an_empty_data_line() -> None:
    # GIVEN `data` lines with no colon
    # WHEN parsed
    events, _ = _parse([b"data\n\ndata\ndata\n\n"])
    # THEN each adds an empty line to the data (one empty line is an event with empty data)
    assert events == [SSEEvent(""), SSEEvent("\n")]


def test_unknown_fields_are_ignored() -> None:
    events, _ = _parse([b"retry: 3000\nfoo: bar\nDATA: upper\ndata: x\n\n"])
    assert events == [SSEEvent("x")]


def test_blank_line_dispatches_and_nothing_before_it() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"data: y\n") == []
    assert parser.feed(b"\n") == [SSEEvent("x\ny")]


def test_event_with_no_data_is_not_dispatched_and_its_type_does_not_leak() -> None:
    # GIVEN an event with a type but no data, then a data-only event
    # WHEN parsed
    events, _ = _parse([b"event: ping\n\nid: 5\n\ndata: x\n\n"])
    # THEN only the data event comes out, as a plain message (the id still applies)
    assert events == [SSEEvent("x", event="message", id="5")]


def test_done_sentinel_is_an_ordinary_event() -> None:
    events, _ = _parse([b"data: [DONE]\n\n"])
    assert events == [SSEEvent("[DONE]")]
    assert events[0].event == "message"
    assert events[0].id is None


def test_several_events_in_one_feed_come_out_in_order() -> None:
    parser = SSEParser()
    payload = "".join(f"data: {chunk}\n\n" for chunk in (ROLE, HELLO, FINISH, USAGE)) + "data: [DONE]\n\n"
    events = parser.feed(payload.encode())
    assert [e.data for e in events] == [ROLE, HELLO, FINISH, USAGE, "[DONE]"]


def test_events_split_across_feeds_come_out_when_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: one\n\ndata: tw") == [SSEEvent("one")]
    assert parser.feed(b"o\n\ndata: three\n\nda") == [SSEEvent("two"), SSEEvent("three")]
    assert parser.feed(b"ta: [DONE]\n\n") == [SSEEvent("[DONE]")]


# --- UTF-8 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["é", "日", "🚀", "a€b"])
def test_multibyte_character_split_across_feeds(text: str) -> None:
    # GIVEN a data line with a multi-byte UTF-8 character
    data = f"data: {text}\n\n".encode()
    for cut in range(len(data) + 1):
        # WHEN the bytes are split anywhere, including inside the character
        parser = SSEParser()
        events = parser.feed(data[:cut]) + parser.feed(data[cut:])
        # THEN the character is decoded intact
        assert events == [SSEEvent(text)], f"split at {cut}"


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events, _ = _parse([b"data: a\xffb\n\n"])
    assert events == [SSEEvent("a\ufffdb")]


# --- feed and flush ------------------------------------------------------------------------------------


def test_empty_feed_returns_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"") == []
    assert parser.flush() == []
    assert parser.comments == 0


def test_flush_after_complete_stream_returns_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]\n\n") == [SSEEvent("[DONE]")]
    assert parser.flush() == []


def test_flush_drops_event_missing_its_blank_line() -> None:
    # GIVEN a data line that ended but was never followed by a blank line
    parser = SSEParser()
    assert parser.feed(b"data: partial\n") == []
    # WHEN the stream ends
    # THEN the event is dropped, per spec
    assert parser.flush() == []


def test_flush_drops_unterminated_trailing_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert parser.flush() == []


def test_flush_processes_trailing_comment_line() -> None:
    # GIVEN a stream that ends in a comment without a line end
    parser = SSEParser()
    parser.feed(b"data: x\n\n: ping")
    assert parser.comments == 0
    # WHEN it is flushed
    # THEN the trailing line is processed (the comment is counted)
    assert parser.flush() == []
    assert parser.comments == 1


def test_flush_discards_pending_data() -> None:
    # GIVEN an undispatched event flushed away
    parser = SSEParser()
    parser.feed(b"data: stale\n")
    parser.flush()
    # WHEN more data arrives on the same parser
    # THEN the dropped data does not reappear
    assert parser.feed(b"data: fresh\n\n") == [SSEEvent("fresh")]


def test_long_line_over_many_feeds() -> None:
    # GIVEN a 64 KiB data line fed in 1 KiB reads
    text = "x" * 65536
    data = f"data: {text}\n\n".encode()
    parser = SSEParser()
    events: list[SSEEvent] = []
    for start in range(0, len(data), 1024):
        events.extend(parser.feed(data[start : start + 1024]))
    # THEN it arrives whole
    assert events == [SSEEvent(text)]
