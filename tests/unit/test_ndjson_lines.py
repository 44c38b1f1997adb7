"""LineSplitter: the same bytes, split anywhere, give the same lines; a line past the cap ends the splitting."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from llm_relay.upstreams.ndjson_lines import MAX_LINE_BYTES, LineSplitter

LINES = ['{"a":"Héllo — 日本語 🚀"}', '{"b":2}', '{"c":[1,2]}']
BODY = ("\r\n".join(LINES[:2]) + "\r\n\n  \n" + LINES[2] + "\n").encode()  # CRLF, LF, blank keep-alives


def _split(data: bytes, cuts: Iterable[int]) -> list[str]:
    splitter = LineSplitter()
    lines: list[str] = []
    start = 0
    for cut in [*cuts, len(data)]:
        lines += splitter.feed(data[start:cut])
        start = cut
    return lines + splitter.close()


@pytest.mark.parametrize("cut", range(len(BODY) + 1))
def test_one_split_anywhere_gives_the_same_lines(cut: int) -> None:
    # GIVEN a body with CRLF and LF ends, blank lines and multi-byte characters, cut at every offset
    # (inside a CRLF, inside a UTF-8 sequence) WHEN split THEN the lines are the same
    assert _split(BODY, [cut]) == LINES


def test_byte_by_byte_gives_the_same_lines() -> None:
    assert _split(BODY, range(1, len(BODY))) == LINES


def test_trailing_line_without_newline_is_handed_out_at_close() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":1}\n{"b"') == ['{"a":1}']
    assert splitter.feed(b":2}") == []
    assert splitter.close() == ['{"b":2}']
    assert splitter.close() == []


def test_leading_byte_order_mark_is_dropped_even_when_split() -> None:
    assert _split(b'\xef\xbb\xbf{"a":1}\n', [1, 2]) == ['{"a":1}']


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert _split(b'{"a":"\xff"}\n', []) == ['{"a":"\ufffd"}']


def test_line_at_the_cap_passes() -> None:
    line = b"x" * MAX_LINE_BYTES
    splitter = LineSplitter()
    assert splitter.feed(line[:10]) == []
    assert splitter.feed(line[10:] + b"\r") == []  # the CR of a CRLF is not counted
    assert splitter.feed(b"\n") == [line.decode()]
    assert not splitter.overflowed


@pytest.mark.parametrize("whole", [True, False], ids=["in-one-read", "unterminated"])
def test_line_past_the_cap_overflows(whole: bool) -> None:
    # GIVEN a complete line before a line one byte past the cap
    splitter = LineSplitter()
    tail = b"\n" if whole else b""
    # WHEN fed THEN the line before it still comes out, and the splitter overflows
    assert splitter.feed(b'{"a":1}\n' + b"x" * (MAX_LINE_BYTES + 1) + tail) == ['{"a":1}']
    assert splitter.overflowed
    # AND later input is ignored
    assert splitter.feed(b'{"b":2}\n') == []
    assert splitter.close() == []
