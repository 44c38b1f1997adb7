"""Pricing (pure): the packaged price table, cost arithmetic in Decimal, overrides and unknown models."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest

from llm_relay.metering import Usage
from llm_relay.pricing import ModelPrice, PriceTable, parse_prices

REQUIRED = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini", "gpt-3.5-turbo")


def test_packaged_table_covers_the_common_models_and_says_where_it_comes_from() -> None:
    raw = json.loads(resources.files("llm_relay").joinpath("prices.json").read_text(encoding="utf-8"))
    assert raw["_source"].startswith("genai-prices ")
    table = PriceTable.load()
    for model in REQUIRED:
        assert table.price_of(model) is not None, model
    assert len(table.models) >= 500  # every provider genai-prices knows, not only OpenAI


def test_cost_is_an_exact_decimal() -> None:
    # GIVEN gpt-4o-mini at $0.15 in / $0.60 out per million tokens
    table = PriceTable.load()
    # WHEN 1000 prompt and 500 completion tokens are priced
    cost = table("gpt-4o-mini", Usage(1000, 500))
    # THEN the cost is exact, as a Decimal
    assert isinstance(cost, Decimal) and cost == Decimal("0.00045")
    assert table("gpt-4o-mini", Usage(0, 0)) == 0


def test_cached_prompt_tokens_cost_the_cached_price() -> None:
    price = ModelPrice(input=Decimal("2.50"), cached_input=Decimal("1.25"), output=Decimal("10"))
    # 1000 prompt tokens, 400 of them cached: 600 * 2.50 + 400 * 1.25 = 2000 (per million)
    assert price.cost(Usage(1000, 0, cached_tokens=400)) == Decimal("0.002")
    # more cached tokens than prompt tokens (a confused upstream) cannot make the cost negative
    assert price.cost(Usage(10, 0, cached_tokens=50)) == Decimal("0.0000125")


def test_dated_and_prefixed_names_find_their_model_but_an_explicit_entry_wins() -> None:
    table = PriceTable.load()
    assert table.price_of("gpt-4o-2024-08-06") == table.price_of("gpt-4o")
    assert table.price_of("openai/GPT-4o-mini") == table.price_of("gpt-4o-mini")
    assert table.price_of("claude-3-5-haiku-20241022") == table.price_of("claude-3-5-haiku")  # Anthropic's dates
    assert table.price_of("gpt-4o-2024-05-13") == ModelPrice(Decimal("5.00"), Decimal("5.00"), Decimal("15.00"))


def test_unknown_model_costs_none_logs_once_and_calls_the_hook(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a hook counting unknown models
    seen: list[str] = []
    table = PriceTable.load(on_unknown=seen.append)
    # WHEN a model without a price is priced twice
    with caplog.at_level(logging.WARNING, logger="llm_relay.pricing"):
        costs = [table("my-local-llama", Usage(10, 10)) for _ in range(2)]
    # THEN the cost is unknown, never an error; one log line, every call reported
    assert costs == [None, None]
    assert seen == ["my-local-llama", "my-local-llama"]
    assert len([r for r in caplog.records if "my-local-llama" in r.getMessage()]) == 1


def test_a_failing_hook_does_not_break_pricing() -> None:
    def broken(model: str) -> None:
        raise RuntimeError("metrics down")

    assert PriceTable.load(on_unknown=broken)("nope", Usage(1, 1)) is None


def test_override_as_json_text_replaces_models_one_by_one() -> None:
    table = PriceTable.load('{"gpt-4o": {"input": 1, "output": 2}, "my-llm": {"input": "0.5", "output": "0.5"}}')
    assert table.price_of("gpt-4o") == ModelPrice(Decimal(1), Decimal(1), Decimal(2))
    assert table("my-llm", Usage(1_000_000, 0)) == Decimal("0.5")
    assert table.price_of("gpt-4o-mini") is not None  # the others stay


def test_override_as_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"house-model": {"input": "3", "cached_input": "1", "output": "9"}}}))
    assert PriceTable.load(str(path)).price_of("house-model") == ModelPrice(Decimal(3), Decimal(1), Decimal(9))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"m": {"input": 1}}', "needs 'input' and 'output'"),
        ('{"m": {"input": -1, "output": 1}}', "invalid input price"),
        ('{"m": {"input": "x", "output": 1}}', "invalid"),
        ('{"m": {"input": true, "output": 1}}', "invalid"),
        ("/nonexistent/prices.json", "cannot read"),
        ('{"models": []}', "'models' must be an object"),
        ('[{"m": {"input": 1, "output": 1}}]', "expected a JSON object"),  # JSON text, not a file name
        ('{"m": ' * 5000 + "1" + "}" * 5000, "nested too deeply"),  # past the parser's recursion limit
    ],
)
def test_a_bad_override_fails_at_start_up(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PriceTable.load(override)


def test_notes_are_ignored() -> None:
    assert parse_prices('{"_note": "x", "m": {"input": 1, "output": 1}}').keys() == {"m"}


def test_bedrock_model_ids_are_priced_at_the_bedrock_price() -> None:
    # GIVEN the packaged table (Bedrock's models come from the price data's `aws` provider)
    table = PriceTable.load()
    # THEN the ids Bedrock's API takes are priced, at Bedrock's price
    for model in (
        "amazon.nova-lite-v1:0",
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "meta.llama3-1-8b-instruct-v1:0",
    ):
        assert table.entry_for(model) == model
        assert table.source_of(model).endswith("(aws)"), model
    assert table.price_of("anthropic.claude-3-5-haiku-20241022-v1:0") == ModelPrice(
        Decimal("0.8"), Decimal("0.08"), Decimal("4")
    )


def test_a_cross_region_inference_profile_costs_the_model_in_its_region() -> None:
    table = PriceTable.load()
    model = "anthropic.claude-3-5-haiku-20241022-v1:0"
    # GIVEN the profiles Bedrock puts in front of a model id WHEN one is priced THEN it finds the model
    for profile in ("us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov."):
        assert table.entry_for(profile + model) == model, profile
    assert table.entry_for("bedrock/us.amazon.nova-lite-v1:0") == "amazon.nova-lite-v1:0"
    # a model the price data only knows behind a profile is priced under its id
    assert table.entry_for("us.amazon.nova-2-lite-v1:0") == "amazon.nova-2-lite-v1:0"


def test_a_global_profile_keeps_its_own_price_and_is_not_stripped() -> None:
    table = PriceTable.load()
    # GIVEN Nova 2 Lite, priced apart in its global profile (cheaper than in one region)
    global_price = table.price_of("global.amazon.nova-2-lite-v1:0")
    regional_price = table.price_of("amazon.nova-2-lite-v1:0")
    assert global_price is not None and regional_price is not None
    assert global_price != regional_price
    # THEN `global.` never falls back to the regional price (nor does an unknown global model find one)
    assert table.entry_for("global.amazon.nova-2-lite-v1:0") == "global.amazon.nova-2-lite-v1:0"
    assert table.entry_for("global.amazon.nova-lite-v1:0") is None


def test_a_profile_prefix_is_only_stripped_before_a_provider_and_model() -> None:
    # GIVEN names that merely start like a profile WHEN priced THEN nothing is stripped from them
    table = PriceTable({"nova": ModelPrice(Decimal(1), Decimal(1), Decimal(1))})
    assert table.entry_for("us.nova") is None
    assert table.entry_for("eu-nova") is None


def test_the_highest_of_several_prices_takes_each_rate_at_its_highest() -> None:
    from llm_relay.pricing import ModelPrice, highest

    cheap_output = ModelPrice(input=Decimal("3"), cached_input=Decimal("0.3"), output=Decimal("1"))
    cheap_input = ModelPrice(input=Decimal("1"), cached_input=Decimal("0.5"), output=Decimal("15"))
    assert highest([cheap_output, cheap_input]) == ModelPrice(Decimal("3"), Decimal("0.5"), Decimal("15"))
