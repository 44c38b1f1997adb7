"""Limit arithmetic (pure): limit resolution, the sliding window, waits, headers, and the judgement of a
refused admission write."""

from __future__ import annotations

import calendar
from decimal import Decimal

import pytest

from llm_relay.limits.rules import (
    CONCURRENCY,
    DAILY,
    LIVE_HOLDER_RETRY_MS,
    MONTHLY,
    PREV,
    RATE,
    UNLIMITED,
    WINDOW_MS,
    AdmissionPlan,
    Limits,
    Refusal,
    Window,
    concurrency_wait_ms,
    format_duration,
    judge,
    next_day_epoch,
    next_month_epoch,
    parse_limit,
    rate_headers,
    refusal,
    refusal_message,
    remaining,
    reserve_tokens,
    retry_after_s,
    scaled_headers,
    shards_for,
    split,
    threshold,
    wait_ms,
    weighted,
)

MINUTE = 29_000_000  # an epoch minute
T0 = MINUTE * 60.0  # its first instant


def plan(limits: Limits, *, at: float = T0 + 30, reserve: int = 10, prev: tuple[int, int] = (0, 0)) -> AdmissionPlan:
    return AdmissionPlan("req_1", "rk_1", limits, at, reserve, 900.0, prev[0], prev[1])


# --- resolution and parsing ---------------------------------------------------------------------------------
def test_key_values_override_defaults_and_unlimited_lifts_one() -> None:
    # GIVEN defaults for every limit
    defaults = Limits(rpm=60, tpm=1000, max_concurrent=2, daily_budget_usd=Decimal(5), monthly_budget_usd=Decimal(50))
    # WHEN a key sets its own rpm and lifts the daily budget
    limits = Limits.resolve({"rpm": Decimal(5), "daily_budget_usd": UNLIMITED}, defaults)
    # THEN its values win, the lifted one is unlimited, the others come from the defaults
    assert limits == Limits(rpm=5, tpm=1000, max_concurrent=2, daily_budget_usd=None, monthly_budget_usd=Decimal(50))
    assert Limits.resolve({}, Limits()).unlimited


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("rpm", "5", Decimal(5)),
        ("rpm", " 10 ", Decimal(10)),
        ("daily_budget_usd", "2.50", Decimal("2.50")),
        ("tpm", "unlimited", UNLIMITED),
        ("max_concurrent", "default", None),
        ("rpm", "0", Decimal(0)),
    ],
)
def test_parse_limit_accepts(name: str, text: str, expected: Decimal | None) -> None:
    assert parse_limit(name, text) == expected


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("rpm", "-1", "must not be negative"),
        ("tpm", "abc", "must be a number"),
        ("rpm", "1.5", "whole number"),
        ("daily_budget_usd", "NaN", "finite"),
        ("monthly_budget_usd", "-0.01", "negative"),
        ("burst", "1", "unknown"),
        ("daily_budget_usd", "Infinity", "finite"),
    ],
)
def test_parse_limit_refuses_with_a_message(name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_limit(name, text)


# --- the sliding window -----------------------------------------------------------------------------------------
def test_window_position() -> None:
    assert Window.at(T0 + 12.345) == Window(MINUTE, 12_345)


def test_fresh_window_admits_exactly_the_limit() -> None:
    # GIVEN no previous minute: the condition `cur <= threshold` admits counts 0..L-1, i.e. exactly L requests
    assert threshold(5, 1, 0, 30_000) == 4
    # AND the previous minute weighs by what is left of it
    assert weighted(10, 0) == 10 and weighted(10, 30_000) == 5 and weighted(10, 59_999) == 0
    assert threshold(10, 1, 10, 30_000) == 4
    assert remaining(10, 3, 10, 30_000) == 2


@pytest.mark.parametrize(
    ("cur", "prev", "elapsed", "allowance"),
    [
        (0, 10, 0, 4),
        (4, 10, 30_000, 4),
        (5, 0, 10_000, 4),
        (9, 3, 59_000, 4),
        (3, 7, 1, 0),
        (0, 1, 0, 0),
    ],
)
def test_wait_is_the_first_moment_the_condition_holds(cur: int, prev: int, elapsed: int, allowance: int) -> None:
    # GIVEN counts that do not fit the allowance now
    def fits(after: int) -> bool:
        e = elapsed + after
        if e < WINDOW_MS:
            return cur + weighted(prev, e) <= allowance
        return weighted(cur, e - WINDOW_MS) <= allowance  # next minute: cur became prev, nothing new

    # WHEN the wait is computed
    wait = wait_ms(cur, prev, elapsed, allowance)
    # THEN the condition holds after it and not one millisecond earlier
    assert wait is not None and fits(wait)
    assert wait == 0 or not fits(wait - 1)


def test_wait_is_none_when_waiting_cannot_help_and_zero_when_it_fits() -> None:
    assert wait_ms(0, 0, 0, -1) is None
    assert wait_ms(2, 4, 45_000, 3) == 0


def test_durations_and_retry_after() -> None:
    assert [format_duration(ms) for ms in (0, 250, 1000, 12_500, 90_000, 61_001)] == [
        "0ms",
        "250ms",
        "1s",
        "12.5s",
        "1m30s",
        "1m1.001s",
    ]
    assert retry_after_s(1) == 1 and retry_after_s(1000) == 1 and retry_after_s(1001) == 2 and retry_after_s(0) == 1


def test_rate_headers() -> None:
    # GIVEN 3 requests this minute and 4 in the previous one, half-way through the minute
    headers = rate_headers("requests", 10, 3, 4, 30_000)
    # THEN remaining counts both, and reset is when none of them weighs any more: 30 s to the end of this
    # minute, then 40.001 s until floor(3 * (60000 - e) / 60000) reaches 0
    assert headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "5",
        "x-ratelimit-reset-requests": "1m10.001s",
    }
    assert rate_headers("tokens", 100, 0, 0, 0)["x-ratelimit-reset-tokens"] == "0ms"


def test_budget_periods_roll_over_in_utc() -> None:
    dec31 = calendar.timegm((2025, 12, 31, 23, 0, 0, 0, 0, 0))
    assert next_day_epoch(dec31) == calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0))
    assert next_month_epoch(dec31) == calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0))
    assert next_month_epoch(calendar.timegm((2025, 2, 10, 0, 0, 0, 0, 0, 0))) == calendar.timegm(
        (2025, 3, 1, 0, 0, 0, 0, 0, 0)
    )


def test_reservation() -> None:
    assert reserve_tokens(40, None) == 40 and reserve_tokens(40, 100, choices=2) == 240


# --- one admission ----------------------------------------------------------------------------------------------
def test_blocked_needs_no_round_trip() -> None:
    assert plan(Limits(rpm=0)).blocked() == ("rpm",)
    assert plan(Limits(tpm=100), reserve=101).blocked() == ("tpm",)
    assert plan(Limits(rpm=10), prev=(40, 0), at=T0).blocked() == ("rpm",)  # the previous minute alone fills it
    assert plan(Limits(max_concurrent=0, daily_budget_usd=Decimal(0))).blocked() == (
        "max_concurrent",
        "daily_budget_usd",
    )
    assert plan(Limits(rpm=1, tpm=100, max_concurrent=1, daily_budget_usd=Decimal(1))).blocked() == ()


def test_a_stale_previous_minute_is_corrected_and_retried() -> None:
    # GIVEN a plan that assumed an empty previous minute, refused only by the previous-minute check
    first = plan(Limits(rpm=10, tpm=1000))
    # WHEN the refusal shows the previous minute's real counts
    verdict = judge(first, {PREV: {"requests": 6, "tokens": 300}})
    # THEN it is not a refusal but a corrected plan with lower thresholds
    assert isinstance(verdict, AdmissionPlan)
    assert (verdict.prev_requests, verdict.prev_tokens) == (6, 300)
    assert verdict.requests_threshold == 10 - 1 - 3 and verdict.tokens_threshold == 1000 - 10 - 150


def test_rate_refusal_names_the_limit_and_the_wait() -> None:
    # GIVEN 5 of 5 requests used in this minute
    verdict = judge(plan(Limits(rpm=5, tpm=1000)), {RATE: {"requests": 5, "tokens": 50}})
    # THEN rpm refused it (not tpm), and the caller may retry 1 ms into the next minute, when the 5 weigh 4
    assert isinstance(verdict, Refusal)
    assert verdict.limits == ("rpm",) and verdict.code == "rate_limit_exceeded"
    assert verdict.cur_requests == 5
    assert verdict.retry_after_ms == 30_001


def test_a_full_concurrency_count_is_a_refusal_whatever_the_item_holds() -> None:
    limits = Limits(max_concurrent=2)
    at = T0 + 30
    # GIVEN the key's count item at its limit, even one still carrying leases written before the ledger (one of
    # them expired): leases live on the request items now, and only the reconciler settles expired ones
    held = {"active": 2, "l_req_dead": int(at) - 1, "l_req_live": int(at) + 600}
    # WHEN the admission's concurrency part refused
    refused = judge(plan(limits, at=at), {CONCURRENCY: held})
    # THEN it is a refusal with a short retry, never a plan to try the same write again
    assert isinstance(refused, Refusal) and refused.limits == ("max_concurrent",)
    assert refused.retry_after_ms == LIVE_HOLDER_RETRY_MS


LEASE_S = 60.0


@pytest.mark.parametrize(
    ("left_s", "wait_ms"),
    [
        ((LEASE_S,), LIVE_HOLDER_RETRY_MS),  # just admitted or renewed
        ((LEASE_S / 2 + 1,), LIVE_HOLDER_RETRY_MS),  # renewed in the last round, a slow one
        ((LEASE_S / 2,), 30_000),  # a round and a half without renewal: its holder stopped; its slot comes back then
        ((12.5,), 12_500),
        ((12.5, 5.0), 5_000),  # several stopped holders: the earliest expiry
        ((5.0, 45.0), LIVE_HOLDER_RETRY_MS),  # a stopped holder and a live one: the live one may end any moment
        ((0.2,), 1000),  # about to expire: at least a second
        ((-3.0,), 1000),  # expired (the reconciler could not settle it yet): try again soon
        ((), LIVE_HOLDER_RETRY_MS),  # no lease found: a slot was just given back
    ],
)
def test_a_concurrency_refusal_waits_briefly_for_a_live_holder_and_for_the_lease_of_a_stopped_one(
    left_s: tuple[float, ...], wait_ms: int
) -> None:
    # GIVEN the key's earliest leases, each with `left_s` to run; WHEN a refusal asks how long to wait
    # THEN a lease renewed on schedule (more than half of it left) is a live stream: a short wait; leases no one
    # renews any more: their earliest expiry
    assert concurrency_wait_ms([T0 + left for left in left_s], T0, LEASE_S) == wait_ms


def test_budget_refusal_waits_for_the_period_and_uses_its_own_code() -> None:
    at = calendar.timegm((2025, 3, 31, 12, 0, 0, 0, 0, 0))
    verdict = judge(
        plan(Limits(rpm=5, daily_budget_usd=Decimal(1), monthly_budget_usd=Decimal(10)), at=at),
        {DAILY: None, MONTHLY: None, RATE: {"requests": 5}},
    )
    assert isinstance(verdict, Refusal)
    assert verdict.code == "budget_exceeded"
    assert verdict.limits == ("rpm", "daily_budget_usd", "monthly_budget_usd")
    assert verdict.retry_after_ms == 12 * 3600 * 1000  # the month ends with the day here


def test_refusal_messages() -> None:
    limits = Limits(rpm=5, tpm=100)
    text = refusal_message(refusal(plan(limits), ("rpm",), 5, 0), limits, 10)
    assert text.startswith("Rate limit reached for this key on requests per minute (RPM): limit 5.")
    assert "try again in" in text
    too_big = refusal(plan(limits, reserve=500), ("tpm",), 0, 0)
    assert too_big.retry_after_ms is None
    assert "larger than the limit" in refusal_message(too_big, limits, 500)


# --- shards -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("total", "shards"), [(40, 4), (7, 3), (3, 8), (1000, 64), (0, 2)])
def test_the_shares_of_a_limit_add_up_to_it_exactly(total: int, shards: int) -> None:
    shares = [split(total, shards, shard) for shard in range(shards)]
    assert sum(shares) == total and max(shares) - min(shares) <= 1


def test_a_shard_enforces_its_share_of_rates_and_concurrency_and_the_whole_budget() -> None:
    limits = Limits(rpm=10, tpm=1000, max_concurrent=5, daily_budget_usd=Decimal(3), shards=4)
    shares = [limits.for_shard(s) for s in range(4)]
    assert [s.rpm for s in shares] == [3, 3, 2, 2] and sum(s.tpm or 0 for s in shares) == 1000
    assert sum(s.max_concurrent or 0 for s in shares) == 5
    assert {s.daily_budget_usd for s in shares} == {Decimal(3)}  # budgets are not split
    assert Limits(rpm=10).for_shard(0) == Limits(rpm=10)  # one shard: the key's own limits


@pytest.mark.parametrize("text", ["0", "65", "2.5", "unlimited", "-1", "many"])
def test_shards_are_a_whole_number_from_1_to_64(text: str) -> None:
    with pytest.raises(ValueError, match="shards must be a whole number from 1 to 64"):
        parse_limit("shards", text)
    assert parse_limit("shards", "8") == Decimal(8) and parse_limit("shards", "default") is None


def test_a_shards_headers_speak_for_the_key() -> None:
    shard = rate_headers("requests", 25, 5, 0, 30_000)  # a shard of 4 with 25 of the key's 100: 20 left
    headers = scaled_headers(shard, Limits(rpm=100, shards=4))
    assert headers["x-ratelimit-limit-requests"] == "100" and headers["x-ratelimit-remaining-requests"] == "80"
    assert scaled_headers(shard, Limits(rpm=25)) == shard


@pytest.mark.parametrize(("rate", "shards"), [(0, 1), (25, 1), (26, 2), (50, 2), (1000, 40), (5000, 64)])
def test_the_shards_a_measured_rate_needs(rate: float, shards: int) -> None:
    # each shard's partition at half its 1,000 units a second, 20 units a request: 25 requests a second a shard
    assert shards_for(rate) == shards
