"""The reservation arithmetic (pure): what admission reserves, when and how much a stream extends, which budgets
refuse without a round trip, and the spend-item parts that reserve, settle and release."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llm_relay.dynamo.budget_store import release_ops, reserve_op, settle_adds
from llm_relay.limits.budgets import (
    OVERRUN_TOKENS,
    BudgetPeriod,
    Reservation,
    conservative_prompt_tokens,
    first_completion_reservation,
    periods_of,
    tokens_cost,
)
from llm_relay.limits.rules import AdmissionPlan, Limits, refusal
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
    # AND content parts count their text, plus a message's framing and the reply's
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcdef"}]}]
    assert conservative_prompt_tokens(parts) == 2 + 5 + 5
    # AND so do a message's name and its tool calls' names and arguments
    call = {"id": "c1", "type": "function", "function": {"name": "abc", "arguments": '{"a":1}'}}
    named = [{"role": "assistant", "name": "abcdef", "content": None, "tool_calls": [call]}]
    assert conservative_prompt_tokens(named) == -(-(6 + 3 + 7) // 3) + 5 + 5


# What the priced providers' chat templates make of a short prompt (text tokens + framing), one user message and
# the reply's priming unless said otherwise:
BILLED = [
    # OpenAI (gpt-4o, gpt-4, gpt-3.5; the tiktoken cookbook): 3 a message + the role + the text, 3 for the reply
    ("openai: hi", [{"role": "user", "content": "hi"}], 3 + 1 + 1 + 3),
    # Llama 3 (Meta's template: Bedrock, Fireworks, Databricks, Cloudflare): <|begin_of_text|>, a message's header
    # (<|start_header_id|> role <|end_header_id|> and the blank line) and <|eot_id|>, the assistant's header
    ("llama 3: hi", [{"role": "user", "content": "hi"}], 1 + (4 + 1 + 1) + 4),
    ("llama 3: three turns", [{"role": r, "content": "hi"} for r in ("user", "assistant", "user")], 1 + 3 * 6 + 4),
    # ChatML (Qwen, and other open models): <|im_start|> role newline, the text, <|im_end|> newline; the reply's
    ("chatml: hi", [{"role": "user", "content": "hi"}], (3 + 1 + 2) + 3),
    # Anthropic: its token counting documentation's example, a system prompt and one message
    (
        "anthropic: documented example",
        [{"role": "system", "content": "You are a scientist"}, {"role": "user", "content": "Hello, Claude"}],
        14,
    ),
]


@pytest.mark.parametrize(("messages", "billed"), [(m, b) for _, m, b in BILLED], ids=[name for name, _, _ in BILLED])
def test_a_very_short_prompt_is_reserved_at_least_at_what_the_priced_providers_bill(
    messages: list[dict[str, str]], billed: int
) -> None:
    # GIVEN a prompt whose text is a token or two: the chat template's framing is most of what is billed
    # THEN the reservation's estimate is at least what the provider's template bills for it
    assert conservative_prompt_tokens(messages) >= billed


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
    # AND at the cap nothing more ahead of need: only an upstream that overruns it (or a count that rounds past it)
    # asks, once the reserved tokens are used up, for a small step, still reserved first
    reservation.grant(50, reservation.cost_of(50))
    assert (reservation.tokens, reservation.extend_at, reservation.next_tokens()) == (250, 251, OVERRUN_TOKENS)
    assert reservation.usd == tokens_cost(MINI, 1, 250) and reservation.extensions == 2


@pytest.mark.parametrize("max_tokens", [1, 100, 256, 1023])
def test_a_request_capped_below_one_increment_reserves_its_cap_at_admission_and_never_extends_ahead(
    max_tokens: int,
) -> None:
    # GIVEN a request whose max_tokens is below one increment (of 1024)
    reservation = Reservation.open(MINI, (DAY,), prompt_tokens=1, max_tokens=max_tokens, increment=1024)
    # THEN admission reserved its whole cap, and no extension is asked for before all of it is used
    assert reservation.tokens == max_tokens
    assert reservation.extend_at == max_tokens + 1
    # AND one asked for past it (an upstream that overruns its cap) is a small step, not a whole increment
    assert reservation.next_tokens() == OVERRUN_TOKENS


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


def test_a_shards_budget_periods_count_the_keys_shards_not_its_shares() -> None:
    # GIVEN a key of 8 shards whose rpm leaves each shard a share of 5 (a share's own count would cut it to 5)
    key = Limits(rpm=40, daily_budget_usd=Decimal(32), shards=8)
    share = key.for_shard(3)
    assert share.rpm == 5 and share.shard_count == 5
    # THEN the periods admission holds on shard 3 are those of 8 shards: blocks of the budget / (8 * 4)
    day, _ = periods_of(share, NOW, 3, key.shard_count)
    assert (day.shard, day.shards, day.item) == (3, 8, day.period + "#3")
    assert day.block(Decimal("0.01")) == Decimal(1)
