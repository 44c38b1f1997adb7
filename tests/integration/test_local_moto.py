"""The local moto server's transactions (llm_relay_dev.local_dynamodb): all or nothing, refusals carry ALL_OLD."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from llm_relay.dynamo import Stores
from llm_relay.dynamo.layout import deserialize, serialize


def _client(stores: Stores) -> Any:
    return stores.client  # untyped: the tests build raw TransactItems


def _item(stores: Stores, pk: str) -> dict[str, object] | None:
    raw = stores.client.get_item(TableName=stores.table_name, Key=serialize({"pk": pk, "sk": "X"})).get("Item")
    return deserialize(raw) if raw else None


def _put(stores: Stores, item: dict[str, object]) -> dict[str, object]:
    return {"Put": {"TableName": stores.table_name, "Item": serialize({"sk": "X", **item})}}


def test_a_refused_transaction_writes_nothing_and_returns_the_old_item(stores: Stores) -> None:
    stores.client.put_item(TableName=stores.table_name, Item=serialize({"pk": "A", "sk": "X", "n": 5}))
    check = {
        "Update": {
            "TableName": stores.table_name,
            "Key": serialize({"pk": "A", "sk": "X"}),
            "UpdateExpression": "ADD n :one",
            "ConditionExpression": "n < :max",
            "ExpressionAttributeValues": serialize({":one": 1, ":max": 5}),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }
    with pytest.raises(ClientError) as cancelled:
        _client(stores).transact_write_items(TransactItems=[_put(stores, {"pk": "B"}), check])
    reasons: Any = cancelled.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed"]
    assert deserialize(reasons[1]["Item"])["n"] == 5
    assert _item(stores, "B") is None and _item(stores, "A") == {"pk": "A", "sk": "X", "n": 5}


def test_an_item_failing_while_applied_puts_the_others_back(stores: Stores) -> None:
    stores.client.put_item(TableName=stores.table_name, Item=serialize({"pk": "A", "sk": "X", "s": "text", "v": 1}))
    bad = {
        "Update": {
            "TableName": stores.table_name,
            "Key": serialize({"pk": "A", "sk": "X"}),
            "UpdateExpression": "ADD s :one",
            "ExpressionAttributeValues": serialize({":one": 1}),
        }
    }
    with pytest.raises(ClientError):
        _client(stores).transact_write_items(
            TransactItems=[_put(stores, {"pk": "B"}), _put(stores, {"pk": "C", "v": 2}), bad]
        )
    assert _item(stores, "B") is None and _item(stores, "C") is None
    assert _item(stores, "A") == {"pk": "A", "sk": "X", "s": "text", "v": 1}


def test_adding_numbers_in_exponent_notation(moto_endpoint: str) -> None:
    # GIVEN a cost below 1e-6, which Python's Decimal (and so boto3) writes as 9E-7
    from decimal import Decimal

    from llm_relay.dynamo import make_client
    from llm_relay_dev.table import create_table

    client = make_client(moto_endpoint)
    create_table(client, "exp-numbers")
    key = serialize({"pk": "K", "sk": "S"})
    # WHEN it is added twice (how spend aggregates grow)
    for _ in range(2):
        client.update_item(
            TableName="exp-numbers",
            Key=key,
            UpdateExpression="ADD cost :c",
            ExpressionAttributeValues=serialize({":c": Decimal("9E-7")}),
        )
    # THEN the sum is exact, as DynamoDB would store it
    item = deserialize(client.get_item(TableName="exp-numbers", Key=key)["Item"])
    assert item["cost"] == Decimal("0.0000018")


def test_a_request_neither_lists_motos_package_nor_inspects_its_handler(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both are taken once per process (llm_relay_dev.local_dynamodb): inside the one-request lock, the package
    listing stalled requests past the client's timeout and the handler inspection was a tenth of a PutItem."""
    import inspect
    import os

    import moto

    listed, inspected = [], []
    listdir, getmembers = os.listdir, inspect.getmembers
    package = os.path.dirname(moto.__file__)

    def counted_listdir(path: Any = ".") -> list[str]:
        if os.fspath(path) == package:
            listed.append(path)
        return listdir(path)

    def counted_getmembers(obj: Any, predicate: Any = None) -> list[tuple[str, Any]]:
        inspected.append(obj)
        return getmembers(obj, predicate)

    for i in range(2):  # the first request may be a class's first: its methods are listed then, once
        stores.client.put_item(TableName=stores.table_name, Item=serialize({"pk": f"warm{i}", "sk": "X"}))
    monkeypatch.setattr(os, "listdir", counted_listdir)
    monkeypatch.setattr(inspect, "getmembers", counted_getmembers)
    for i in range(5):
        stores.client.put_item(TableName=stores.table_name, Item=serialize({"pk": f"P{i}", "sk": "X"}))
    assert _item(stores, "P4") is not None
    assert listed == [] and inspected == []
