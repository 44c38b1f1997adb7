"""The CLI's argument types and output (pure): limits within what DynamoDB stores exactly, dates and expiries,
key ids, sanitizer modes and entity types; plain decimals; sanitizer policies; control characters escaped."""

from __future__ import annotations

import argparse
from decimal import Decimal

import pytest

from llm_relay.commands import options, sanitize_view
from llm_relay.commands.output import jsonable, plain, printable
from llm_relay.commands.usage import redactions_text
from llm_relay.keys import ApiKey
from llm_relay.sanitize.policy import ENTITY_TYPES, KeyPolicy, Policy, Side
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


def test_a_new_key_expires_in_the_future_or_never():
    assert options.future_expiry("9999-12-31") == "9999-12-31T00:00:00Z" and options.future_expiry("never") is None
    assert options.future_expiry("+1h") > options.future_expiry("+1s")  # type: ignore[operator]
    # an expiry already past is refused (a key created with it could never be used); one changed later may be past
    for past in ("2001-01-01", "2020-06-01T12:00Z"):
        with pytest.raises(argparse.ArgumentTypeError, match="already past"):
            options.future_expiry(past)
        assert options.expiry(past) is not None
    with pytest.raises(argparse.ArgumentTypeError, match="cannot read expiry"):
        options.future_expiry("tomorrow")


def test_key_ids():
    assert options.key_id(" rk_1a2b3c4d5e6f ") == "rk_1a2b3c4d5e6f"
    for bad in ("1a2b", "rk_", "rk_a b", "rk_" + "a" * 65):
        with pytest.raises(argparse.ArgumentTypeError, match="not a key id"):
            options.key_id(bad)


def test_sanitizer_modes_and_entity_types():
    assert options.sanitize_mode(" Redact ") == "redact" and options.sanitize_mode("default") is None
    assert options.sanitize_entities("email, iban") == frozenset({"EMAIL", "IBAN"})
    assert options.sanitize_entities("all") == frozenset(ENTITY_TYPES) and options.sanitize_entities("default") is None
    with pytest.raises(argparse.ArgumentTypeError, match="must be off, redact, block or default, not 'mask'"):
        options.sanitize_mode("mask")
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown entity type.*SSN; known: PRIVATE_KEY"):
        options.sanitize_entities("EMAIL,SSN")
    with pytest.raises(argparse.ArgumentTypeError, match="give entity types"):
        options.sanitize_entities(" , ")


def test_sanitizer_policies_as_text_and_json():
    # GIVEN a deployment redacting the output, and a key asking for a blocked prompt on two types
    floor = Policy(output=Side("redact"))
    own = KeyPolicy(prompt="block", entities=frozenset({"IBAN", "EMAIL"}))
    effective = floor.for_key(own)
    # THEN its own policy names what it leaves to the deployment, the one in force each side's types
    assert sanitize_view.own_text(own) == "output default, prompt block, entities EMAIL,IBAN"
    assert sanitize_view.own_text(None) == sanitize_view.own_text(KeyPolicy()) == "default (the deployment's)"
    assert sanitize_view.own_json(own) == {"output": None, "prompt": "block", "entities": ["EMAIL", "IBAN"]}
    assert sanitize_view.effective_text(effective) == "output redact (all), prompt block (EMAIL,IBAN)"
    assert sanitize_view.effective_json(floor)["prompt"] == {"mode": "off", "entities": []}
    assert sanitize_view.short_text(effective) == "out=redact prompt=block"
    assert sanitize_view.short_text(Policy()) == "off"


def test_redactions_as_text():
    assert redactions_text({"PHONE_NUMBER": 1, "EMAIL": 2}, {"EMAIL": 1}) == "EMAIL=2 PHONE_NUMBER=1 prompt:EMAIL=1"
    assert redactions_text({}, {}) == "-" and redactions_text({"EMAIL": 0}) == "-"
    assert redactions_text({"E\nX": 1, "E\x1bY": 1}) == "E\\nX=1 E\\x1bY=1"


def test_expiry_of_a_key():
    key = ApiKey("rk_a", "a", expires_at="2025-01-01T00:00:00Z")
    assert key.expired(1735689600.0) and not key.expired(1735689599.0)
    assert not ApiKey("rk_a", "a").expired(1e12)


@pytest.mark.parametrize("escaper", [printable, escape])
def test_control_characters_are_escaped_and_the_rest_kept(escaper):
    assert escaper("gpt\n[relay] forged\x1b[2J\u2028") == "gpt\\n[relay] forged\\x1b[2J\\u2028"
    assert escaper("modèle-ü 模型") == "modèle-ü 模型"
