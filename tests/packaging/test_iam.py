"""The function role's DynamoDB statements (template.yaml): reads on the relay table, writes only to the item
families the relay writes (`dynamodb:LeadingKeys`), never to key items, no Scan, and Query only on the keys-only
`leases` index (the operator's CLI reads usage and lists keys with the operator's own credentials)."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

from llm_relay.dynamo import layout
from llm_relay.keys import ApiKey
from llm_relay_dev.table import load_template
from tests.packaging.conftest import REPO

TABLE_ARN = {"Fn::GetAtt": ["RelayTable", "Arn"]}
READS = {"dynamodb:GetItem", "dynamodb:BatchGetItem"}
WRITES = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"}


@pytest.fixture(scope="module")
def statements() -> list[dict[str, Any]]:
    """The function's DynamoDB statements, both branches of conditional policies included."""
    found: list[dict[str, Any]] = []
    for policy in load_template(REPO / "template.yaml")["Resources"]["RelayFunction"]["Properties"]["Policies"]:
        if "Fn::If" in policy:
            policy = policy["Fn::If"][1]
        found += [s for s in policy["Statement"] if any(a.startswith("dynamodb:") for a in _actions(s))]
    return found


def _actions(statement: dict[str, Any]) -> set[str]:
    actions = statement["Action"]
    return {actions} if isinstance(actions, str) else set(actions)


def _leading_keys(statement: dict[str, Any]) -> list[str]:
    condition = statement.get("Condition", {})
    assert set(condition) <= {"ForAllValues:StringLike"}, condition
    patterns: list[str] = condition.get("ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys", [])
    return patterns


def _writable(statements: list[dict[str, Any]], pk: str) -> bool:
    return any(_actions(s) & WRITES and any(fnmatch.fnmatchcase(pk, p) for p in _leading_keys(s)) for s in statements)


LEASES_INDEX = {"Fn::Sub": "${RelayTable.Arn}/index/leases"}


def test_no_query_or_scan_and_only_item_reads_and_writes_on_the_table(statements):
    granted = {action for s in statements for action in _actions(s)}
    # THEN the function may not Scan (every key), nor Query the table or gsi1 (every key's usage): its one Query is
    # on the keys-only `leases` index (a key's earliest lease, for a concurrency refusal's Retry-After)
    assert "dynamodb:Scan" not in granted
    assert granted == READS | WRITES | {"dynamodb:Query"}
    for statement in statements:
        assert statement["Effect"] == "Allow", json.dumps(statement)
        if "dynamodb:Query" in _actions(statement):
            assert _actions(statement) == {"dynamodb:Query"} and statement["Resource"] == LEASES_INDEX
            assert "Condition" not in statement
        else:
            assert statement["Resource"] == TABLE_ARN, json.dumps(statement)


def test_the_only_queried_index_projects_keys_only():
    # GIVEN the table's indexes: the one the function may Query holds no usage, only keys and lease expiries
    indexes = load_template(REPO / "template.yaml")["Resources"]["RelayTable"]["Properties"]["GlobalSecondaryIndexes"]
    [leases] = [index for index in indexes if index["IndexName"] == "leases"]
    assert leases["Projection"] == {"ProjectionType": "KEYS_ONLY"}


def test_every_write_is_limited_to_leading_keys(statements):
    for statement in statements:
        if _actions(statement) & WRITES:
            assert _actions(statement) <= WRITES, "writes and reads in one statement"
            assert _leading_keys(statement), f"{statement.get('Sid')}: a write without dynamodb:LeadingKeys"


def test_the_relay_item_families_are_writable_and_key_items_are_not(statements):
    # GIVEN the partitions of what the relay writes while serving requests, and of a key's two items
    record = ApiKey(key_id="rk_a", name="a", created_at="2025-01-01T00:00:00Z")
    key_items = layout.key_items(record, "f" * 64)
    relay_writes = [layout.request_key("req_1")["pk"], layout.partition("rk_a")]
    # THEN the relay's are writable, the key items only readable
    assert all(_writable(statements, pk) for pk in relay_writes)
    assert not any(_writable(statements, item["pk"]) for item in key_items)
    reads = [s for s in statements if _actions(s) & READS]
    assert reads and all("Condition" not in s for s in reads)
