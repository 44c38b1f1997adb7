"""The table layout: every item's keys and attributes, and the values read back from them."""

from __future__ import annotations

from decimal import Decimal

from llm_relay.dynamo.layout import key_attributes, key_from_item, usage_item, usage_record
from llm_relay.keys import ApiKey
from llm_relay.usage import iso_ms
from tests.unit.test_usage import T, record


def test_full_record_round_trips() -> None:
    # GIVEN a revoked key restricted to two models with limits
    key = ApiKey(
        key_id="rk_0123456789ab",
        name="team-a",
        status="revoked",
        created_at="2024-06-10T12:00:00Z",
        revoked_at="2024-06-11T08:30:00Z",
        allowed_models=frozenset({"gpt-4o", "gpt-4o-mini"}),
        limits={"rpm": Decimal(60), "daily_usd": Decimal("12.50")},
    )
    # WHEN stored and read back
    item = key_attributes(key)
    # THEN the item is exactly the DynamoDB shape and reads back equal
    assert item == {
        "key_id": "rk_0123456789ab",
        "name": "team-a",
        "status": "revoked",
        "created_at": "2024-06-10T12:00:00Z",
        "revoked_at": "2024-06-11T08:30:00Z",
        "allowed_models": ["gpt-4o", "gpt-4o-mini"],
        "limits": {"rpm": Decimal(60), "daily_usd": Decimal("12.50")},
    }
    assert key_from_item(item) == key


def test_minimal_record_round_trips_without_optional_attributes() -> None:
    key = ApiKey(key_id="rk_aaaaaaaaaaaa", name="dev", created_at="2024-06-10T12:00:00Z")
    item = key_attributes(key)
    assert item == {
        "key_id": "rk_aaaaaaaaaaaa",
        "name": "dev",
        "status": "active",
        "created_at": "2024-06-10T12:00:00Z",
    }
    assert key_from_item(item) == key


def test_empty_allow_list_round_trips_as_allow_nothing() -> None:
    key = ApiKey(key_id="rk_1", name="locked", allowed_models=frozenset())
    back = key_from_item(key_attributes(key))
    assert back.allowed_models == frozenset()
    assert back.allows_model("gpt-4o") is False


def test_from_item_defaults() -> None:
    key = key_from_item({"key_id": "rk_x"})
    assert key == ApiKey(
        key_id="rk_x", name="", status="active", created_at="", revoked_at=None, allowed_models=None, limits={}
    )
    assert key.active is True


def test_from_item_converts_limits_to_decimal() -> None:
    key = key_from_item({"key_id": "rk_x", "limits": {"rpm": 30, "daily_usd": "1.25"}})
    assert key.limits == {"rpm": Decimal(30), "daily_usd": Decimal("1.25")}
    assert all(isinstance(v, Decimal) for v in key.limits.values())


def test_item_is_queryable_by_key_and_time_and_by_day() -> None:
    item = usage_item(record(), 30)
    assert item["pk"] == "KEY#rk_1"
    assert item["sk"] == "USAGE#2025-03-04T05:06:07.089Z#req_a"
    assert (item["gsi1pk"], item["gsi1sk"]) == ("USAGE#2025-03-04#5", "2025-03-04T05:06:07.089Z#req_a")
    assert item["expires_at"] == int(T) + 30 * 86400
    assert item["cost_usd"] == Decimal("0.0000198") and item["usage_source"] == "upstream"


def test_unknown_cost_is_absent_and_the_record_round_trips() -> None:
    original = record(cost_usd=None, usage_source="estimated", cancel_source="disconnect", ttft_ms=None)
    item = usage_item(original, 1)
    assert "cost_usd" not in item and "ttft_ms" not in item
    back = usage_record(item)
    assert back == original
    assert iso_ms(back.started_epoch) == "2025-03-04T05:06:07.089Z"


def test_attempts_that_may_have_been_billed_are_kept_on_the_record_item() -> None:
    # GIVEN a record whose upstream failed twice in a way a model may have answered (a 504, a close without answer)
    original = record(attempts_maybe_billed=2)
    item = usage_item(original, 1)
    # THEN the item says so, and reads back the same; a record without such attempts carries no attribute
    assert item["attempts_maybe_billed"] == 2 and usage_record(item) == original
    assert "attempts_maybe_billed" not in usage_item(record(), 1)
    assert original.as_json()["attempts_maybe_billed"] == 2
