"""The reservation arithmetic (pure): what admission reserves, when and how much a stream extends, which budgets
refuse without a round trip, and the spend-item parts that reserve, settle and release."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llm_relay.budgets import (
    BudgetPeriod,
    Reservation,
    conservative_prompt_tokens,
    first_completion_reservation,
    periods_of,
    tokens_cost,
)
from llm_relay.dynamo.budget_store import release_ops, reserve_op, settle_adds
from llm_relay.limits import AdmissionPlan, Limits, refusal
from llm_relay.metering import estimate_prompt_tokens
from llm_relay.pricing import ModelPrice

MINI = ModelPrice(input=Decimal("0.15"), cached_input=Decimal("0.075"), output=Decimal("0.60"))
DAY = BudgetPeriod("daily_budget_usd", "D#2023-11-14", Decimal("0.0001"))
MONTH = BudgetPeriod("monthly_budget_usd", "M#2023-11", None)
NOW = 1700000000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("max_tokens", "choices", "reserved"),
    [
        (None, 1, 1024),  # no cap: one increment
        (20, 1, 20),  # a cap below the increment: the cap
        (20, 3, 60),  # every choice may run to the cap
        (1024, 1, 1024),  # the cap equal to the increment: one increment
        (5000, 1, 1024),  # a cap above it: one increment now, more while it streams
    ],
)
def test_the_first_reservation_is_the_cap_below_one_increment_else_one_increment(
    max_tokens: int | None, choices: int, reserved: int
) -> None:
    assert first_completion_reservation(max_tokens, 1024, choices) == reserved


def test_the_prompt_estimate_is_conservative_for_english_and_dense_scripts() -> None:
    english = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 20}]
    cjk = [{"role": "user", "content": "敏捷的棕色狐狸跳过了懒狗" * 20}]  # about one token a character
    # GIVEN English: above the ~4-characters-a-token estimate the relay meters with
    assert conservative_prompt_tokens(english) > estimate_prompt_tokens(english)
    # AND CJK text: at least one token a character
    assert conservative_prompt_tokens(cjk) >= len(cjk[0]["content"])
    # AND content parts count their text
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcdef"}]}]
    assert conservative_prompt_tokens(parts) == 2 + 4


def test_a_reservation_costs_its_prompt_at_the_input_price_and_its_completion_at_the_output_price() -> None:
    # GIVEN 8 prompt tokens and max_tokens 20 on gpt-4o-mini prices
    reservation = Reservation.open(MINI, (DAY,), prompt_tokens=8, max_tokens=20, increment=1024)
    # THEN it reserves 20 completion tokens, $0.0000132
    assert (reservation.tokens, reservation.usd) == (20, Decimal("0.0000132"))
    assert tokens_cost(MINI, 0, 50) == Decimal("0.00003")


def test_an_extension_is_asked_for_a_quarter_increment_ahead_and_never_past_the_cap() -> None:
    # GIVEN increments of 100 and a cap of 250
    reservation = Reservation.open(MINI, (DAY,), prompt_tokens=1, max_tokens=250, increment=100)
    # THEN the next increment is asked for at 75 tokens, for 100 more
    assert (reservation.tokens, reservation.extend_at, reservation.next_tokens()) == (100, 75, 100)
    reservation.grant(100, reservation.cost_of(100))
    assert (reservation.tokens, reservation.extend_at, reservation.next_tokens()) == (200, 175, 50)
    # AND past the cap (an upstream that overruns it) whole increments, still reserved first
    reservation.grant(50, reservation.cost_of(50))
    assert reservation.next_tokens() == 100
    assert reservation.usd == tokens_cost(MINI, 1, 250) and reservation.extensions == 2


def test_periods_are_the_day_and_month_whenever_the_key_has_a_budget() -> None:
    assert periods_of(Limits(rpm=5), NOW) == ()
    assert periods_of(Limits(daily_budget_usd=Decimal(1)), NOW) == (
        BudgetPeriod("daily_budget_usd", "D#2023-11-14", Decimal(1)),
        BudgetPeriod("monthly_budget_usd", "M#2023-11", None),
    )


def test_a_reservation_larger_than_a_budget_is_refused_without_a_round_trip() -> None:
    # GIVEN a $0.0001 daily budget
    limits = Limits(daily_budget_usd=Decimal("0.0001"))
    fits = AdmissionPlan("r", "k", limits, NOW, 0, 900.0, reserve_usd=Decimal("0.0001"))
    too_big = AdmissionPlan("r", "k", limits, NOW, 0, 900.0, reserve_usd=Decimal("0.00011"))
    # THEN a reservation of the whole budget goes to DynamoDB, a larger one is refused at once
    assert fits.blocked() == ()
    assert too_big.blocked() == ("daily_budget_usd",)
    # AND with no Retry-After, since no window will ever fit it
    assert refusal(too_big, ("daily_budget_usd",), 0, 0).retry_after_ms is None
    assert refusal(fits, ("daily_budget_usd",), 0, 0).retry_after_ms is not None


def test_the_reserve_part_is_conditional_only_where_there_is_a_budget() -> None:
    budgeted = reserve_op("t", "rk_a", DAY, Decimal("0.00002"))["Update"]
    assert budgeted["UpdateExpression"] == "ADD committed_usd :amount, reserved_usd :amount"
    assert budgeted["ConditionExpression"] == "attribute_not_exists(committed_usd) OR committed_usd <= :room"
    assert budgeted["ExpressionAttributeValues"][":room"] == {"N": "0.00008"}
    assert "ConditionExpression" not in reserve_op("t", "rk_a", MONTH, Decimal("0.00002"))["Update"]


def test_settlement_swaps_the_reservation_for_the_cost_and_release_does_the_same_for_a_lost_request() -> None:
    # GIVEN $0.00003 reserved and $0.00001 spent
    adds, values = settle_adds(Decimal("0.00001"), Decimal("0.00003"))
    assert adds == ["committed_usd :committed", "reserved_usd :unreserve"]
    assert values == {":committed": Decimal("-0.00002"), ":unreserve": Decimal("-0.00003")}
    # AND an unpriced request (nothing reserved, cost unknown) commits nothing
    assert settle_adds(None, Decimal(0)) == (["committed_usd :committed"], {":committed": Decimal(0)})
    # AND the reconciler's release: both spend items of the request's day and month
    ops = release_ops("t", "rk_a", NOW, Decimal("0.00003"))
    assert [op["Update"]["Key"]["sk"]["S"] for op in ops] == ["SPEND#D#2023-11-14", "SPEND#M#2023-11"]
    assert ops[0]["Update"]["ExpressionAttributeValues"][":unreserve"] == {"N": "-0.00003"}
