"""One millisecond rounding, and the Server-Timing header built from it."""

from __future__ import annotations

from decimal import Decimal

from llm_relay.durations import millis, millis_decimal, server_timing


def test_milliseconds_to_the_microsecond() -> None:
    assert millis(0.0123456) == 12.346 and millis(None) is None
    assert millis_decimal(0.0123456) == Decimal("12.346") and millis_decimal(None) is None


def test_server_timing_names_each_phase_in_milliseconds_without_trailing_zeros() -> None:
    header = server_timing([("auth", 0.000412), ("parse", 0.0001), ("admit", 0.0031), ("upstream", 0.02)])
    assert header == "auth;dur=0.412, parse;dur=0.1, admit;dur=3.1, upstream;dur=20"


def test_server_timing_never_shows_a_negative_duration() -> None:
    # a clock step between two marks cannot happen with time.monotonic, but the header must stay valid anyway
    assert server_timing([("auth", -0.5), ("admit", 0.0)]) == "auth;dur=0, admit;dur=0"
