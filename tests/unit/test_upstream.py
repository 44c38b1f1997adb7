"""Pure helpers of the upstream adapter: backoff, Retry-After parsing, status classes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from llm_relay.upstream import RETRYABLE_STATUS, backoff_s, parse_retry_after, status_class


class FixedRandom(random.Random):
    """`uniform(a, b)` returns the upper bound, so the jitter ceiling can be asserted exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class ZeroRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


# --- backoff_s -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (30, 8.0)]
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    # GIVEN base 0.5 s and cap 8 s
    # WHEN the jitter draws its maximum
    # THEN the delay is base * 2**attempt, capped
    assert backoff_s(attempt, 0.5, 8.0, None, FixedRandom()) == ceiling


def test_backoff_is_full_jitter_from_zero() -> None:
    assert backoff_s(3, 0.5, 8.0, None, ZeroRandom()) == 0.0


def test_backoff_stays_within_bounds_for_a_seeded_rng() -> None:
    # GIVEN a seeded RNG
    rng = random.Random(7)
    for attempt in range(8):
        ceiling = min(10.0, 0.25 * 2**attempt)
        for _ in range(200):
            # WHEN the backoff is drawn
            delay = backoff_s(attempt, 0.25, 10.0, None, rng)
            # THEN it is within [0, min(cap, base * 2**attempt)]
            assert 0.0 <= delay <= ceiling


def test_backoff_is_deterministic_for_a_given_seed() -> None:
    first = [backoff_s(a, 0.1, 5.0, None, random.Random(42)) for a in range(5)]
    second = [backoff_s(a, 0.1, 5.0, None, random.Random(42)) for a in range(5)]
    assert first == second


def test_retry_after_wins_when_longer() -> None:
    # GIVEN a jittered delay of 0 and a Retry-After of 3 s
    # WHEN the backoff is computed
    # THEN the server's value is used
    assert backoff_s(0, 0.5, 30.0, 3.0, ZeroRandom()) == 3.0


def test_jitter_wins_when_longer_than_retry_after() -> None:
    assert backoff_s(4, 1.0, 30.0, 2.0, FixedRandom()) == 16.0


def test_retry_after_is_capped() -> None:
    assert backoff_s(0, 0.5, 8.0, 120.0, ZeroRandom()) == 8.0
    assert backoff_s(0, 0.5, 8.0, float("inf"), ZeroRandom()) == 8.0


def test_zero_retry_after_does_not_shorten_backoff() -> None:
    assert backoff_s(2, 0.5, 8.0, 0.0, FixedRandom()) == 2.0


# --- parse_retry_after ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), ("0", 0.0), ("1.5", 1.5), (" 7 ", 7.0), ("-3", 0.0), ("120", 120.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "5s", "Tuesday", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_http_date_in_the_future() -> None:
    # GIVEN an HTTP date 30 s from now
    value = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    # WHEN parsed
    seconds = parse_retry_after(value)
    # THEN it is the seconds until then (HTTP dates have whole-second precision)
    assert seconds is not None
    assert 28.0 <= seconds <= 30.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# --- status_class --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (204, "2xx"),
        (301, "3xx"),
        (400, "4xx"),
        (429, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (503, "5xx"),
        (599, "5xx"),
    ],
)
def test_status_class(status: int, expected: str) -> None:
    assert status_class(status) == expected


def test_retryable_statuses() -> None:
    assert frozenset({408, 429, 500, 502, 503, 504}) == RETRYABLE_STATUS
    assert 409 not in RETRYABLE_STATUS  # a conflict is not transient
    assert 400 not in RETRYABLE_STATUS
    assert 401 not in RETRYABLE_STATUS
