"""The CLI's argument types and output (pure): limits within what DynamoDB stores exactly, dates and expiries,
key ids; plain decimals; control characters escaped."""

from __future__ import annotations

import argparse
from decimal import Decimal

import pytest

from llm_relay.commands import options
from llm_relay.commands.output import jsonable, plain, printable
from llm_relay.keys import ApiKey
from llm_relay_dev.human_log import escape


def test_limits_are_bounded_and_plain():
    rpm, budget = options.limit("rpm"), options.limit("daily_budget_usd")
    assert rpm("60") == Decimal(60) and plain(rpm("6e1")) == "60"  # type: ignore[arg-type]
    assert budget("1.50") == Decimal("1.50") and budget("unlimited") == Decimal(-1) and budget("default") is None
    for bad, reason in (("1e400", "at most"), ("1e-400", "decimal places"), ("NaN", "finite"), ("-1", "negative")):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            budget(bad)


def test_json_numbers_whole_as_numbers_money_as_exact_strings():
    assert jsonable({"rpm": Decimal("6E+1"), "usd": Decimal("0.00001275"), "list": [Decimal("1E+2")]}) == {
        "rpm": 60,
        "usd": "0.00001275",
        "list": [100],
    }


def test_dates_ages_and_expiries():
    assert options.when("2025-01-31") == 1738281600.0
    assert options.when("2025-01-31T12:00Z") == 1738281600.0 + 43200
    assert options.expiry("2026-12-31") == "2026-12-31T00:00:00Z" and options.expiry("never") is None
    assert options.expiry("+1d") > options.expiry("+1h")  # type: ignore[operator]
    for bad in ("2025-02-30", "yesterday", "99999999999d", "1999-12-31"):
        with pytest.raises(argparse.ArgumentTypeError):
            options.when(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        options.expiry("tomorrow")


def test_key_ids():
    assert options.key_id(" rk_1a2b3c4d5e6f ") == "rk_1a2b3c4d5e6f"
    for bad in ("1a2b", "rk_", "rk_a b", "rk_" + "a" * 65):
        with pytest.raises(argparse.ArgumentTypeError, match="not a key id"):
            options.key_id(bad)


def test_expiry_of_a_key():
    key = ApiKey("rk_a", "a", expires_at="2025-01-01T00:00:00Z")
    assert key.expired(1735689600.0) and not key.expired(1735689599.0)
    assert not ApiKey("rk_a", "a").expired(1e12)


@pytest.mark.parametrize("escaper", [printable, escape])
def test_control_characters_are_escaped_and_the_rest_kept(escaper):
    assert escaper("gpt\n[relay] forged\x1b[2J\u2028") == "gpt\\n[relay] forged\\x1b[2J\\u2028"
    assert escaper("modèle-ü 模型") == "modèle-ü 模型"
