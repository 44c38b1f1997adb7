"""The exact DynamoDB requests of admission and settlement, pinned with botocore's Stubber (no network): the
conditions, ALL_OLD on failure and the client request tokens are what makes the ledger exact, so a change to
any of them must be deliberate."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from llm_relay.dynamo import LimitsStore
from llm_relay.ledger import Settlement
from llm_relay.limits.rules import AdmissionPlan, Limits
from llm_relay.usage import UsageRecord

TABLE = "relay"
NOW = 1_700_000_030.0  # 2023-11-14T22:13:50Z, epoch minute 28333333
ALL_OLD = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
RATE_CONDITION = (
    "(attribute_not_exists(requests) OR requests <= :rmax) AND (attribute_not_exists(tokens) OR tokens <= :tmax)"
)
BUDGET_CONDITION = "attribute_not_exists(committed_usd) OR committed_usd <= :room"
RESERVE = "ADD committed_usd :amount, reserved_usd :amount"


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: int | str) -> dict[str, str]:
    return {"N": str(value)}


def key(pk: str, sk: str) -> dict[str, Any]:
    return {"TableName": TABLE, "Key": {"pk": s(pk), "sk": s(sk)}}


@pytest.fixture
def stubbed() -> Any:
    client = boto3.client("dynamodb", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


REQUEST_ITEM: dict[str, Any] = {
    "pk": "REQ#req_1",
    "sk": "REQ",
    "key_id": "rk_a",
    "model": "gpt-4o-mini",
    "started_at": "2023-11-14T22:13:50Z",
    "expires_at": 1700086430,
}

ADMISSION = [
    {
        "Put": {
            "TableName": TABLE,
            "Item": {k: s(v) if isinstance(v, str) else n(v) for k, v in REQUEST_ITEM.items()},
            "ConditionExpression": "attribute_not_exists(pk)",  # a released request cannot be admitted late
            **ALL_OLD,
        }
    },
    {
        "Update": {
            **key("KEY#rk_a", "RATE#28333333"),
            "UpdateExpression": "ADD requests :one, tokens :reserve SET expires_at = :ttl",
            "ConditionExpression": RATE_CONDITION,
            **ALL_OLD,
            "ExpressionAttributeValues": {
                ":rmax": n(9),
                ":tmax": n(874),
                ":one": n(1),
                ":reserve": n(120),
                ":ttl": n(1700000340),
            },
        }
    },
    {
        "ConditionCheck": {
            **key("KEY#rk_a", "RATE#28333332"),
            "ConditionExpression": RATE_CONDITION,
            **ALL_OLD,
            "ExpressionAttributeValues": {":rmax": n(3), ":tmax": n(40)},
        }
    },
    {
        "Update": {
            **key("KEY#rk_a", "CONC"),
            "UpdateExpression": "ADD active :one",  # a bare count: the lease is on the request item
            "ConditionExpression": "(attribute_not_exists(active) OR active < :max)",
            **ALL_OLD,
            "ExpressionAttributeValues": {":one": n(1), ":max": n(2)},
        }
    },
    {
        "Update": {
            **key("KEY#rk_a", "SPEND#D#2023-11-14"),
            "UpdateExpression": RESERVE,
            "ConditionExpression": BUDGET_CONDITION,
            **ALL_OLD,
            "ExpressionAttributeValues": {":amount": n("0.01"), ":room": n("1.49")},
        }
    },
    {
        "Update": {
            **key("KEY#rk_a", "SPEND#M#2023-11"),
            "UpdateExpression": RESERVE,
            "ConditionExpression": BUDGET_CONDITION,
            **ALL_OLD,
            "ExpressionAttributeValues": {":amount": n("0.01"), ":room": n("19.99")},
        }
    },
]


def test_admission_is_one_transaction_of_every_limit_part(stubbed: Any) -> None:
    client, stubber = stubbed
    # GIVEN a key with every limit, 3 requests and 40 tokens seen in the previous minute
    limits = Limits(rpm=10, tpm=1000, max_concurrent=2, daily_budget_usd=Decimal("1.5"), monthly_budget_usd=Decimal(20))
    plan = AdmissionPlan("req_1", "rk_a", limits, NOW, 120, 900.0, 3, 40, reserve_usd=Decimal("0.01"))
    token = hashlib.sha256(b"relay:req_1:admit0").hexdigest()[:36]
    expected = {"TransactItems": ADMISSION, "ClientRequestToken": token}
    stubber.add_response("transact_write_items", {}, expected)
    # WHEN it is admitted
    result = LimitsStore(TABLE, client).admit(plan, REQUEST_ITEM)
    # THEN exactly this request went out, and the request is admitted
    assert result.admitted


USAGE_ITEM = {
    "pk": s("KEY#rk_a"),
    "sk": s("USAGE#2023-11-14T22:13:50.250Z#req_1"),
    "gsi1pk": s("USAGE#2023-11-14#12"),  # the request's shard of the day's gsi1 partitions
    "gsi1sk": s("2023-11-14T22:13:50.250Z#req_1"),
    "key_id": s("rk_a"),
    "request_id": s("req_1"),
    "model": s("gpt-4o-mini"),
    "timestamp": s("2023-11-14T22:13:50.250Z"),
    "termination_reason": s("stop"),
    "prompt_tokens": n(10),
    "completion_tokens": n(20),
    "cached_tokens": n(0),
    "usage_source": s("upstream"),
    "mode": s("sse"),
    "expires_at": n(1702592030),
    "cost_usd": n("0.0012"),
    "ttft_ms": n("150.5"),
    "duration_ms": n(900),
}
SPEND_ADD = (
    "ADD requests :one, prompt_tokens :prompt, completion_tokens :completion, cost_usd :cost,"
    " committed_usd :committed, reserved_usd :unreserve"
)
SPEND_VALUES = {
    ":one": n(1),
    ":prompt": n(10),
    ":completion": n(20),
    ":kid": s("rk_a"),
    ":committed": n("-0.0038"),
    ":unreserve": n("-0.005"),
}

SETTLEMENT = [
    {"Put": {"TableName": TABLE, "Item": USAGE_ITEM, "ConditionExpression": "attribute_not_exists(pk)"}},
    {
        "Update": {
            **key("KEY#rk_a", "SPEND#D#2023-11-14"),
            "UpdateExpression": SPEND_ADD
            + " SET key_id = :kid, period = :period, expires_at = :ttl REMOVE gsi1pk, gsi1sk",
            "ExpressionAttributeValues": {
                **SPEND_VALUES,
                ":period": s("2023-11-14"),
                ":ttl": n(1702678430),
                ":cost": n("0.0012"),
            },
        }
    },
    {
        "Update": {
            **key("KEY#rk_a", "SPEND#M#2023-11"),
            "UpdateExpression": SPEND_ADD + " SET key_id = :kid, period = :period, expires_at = :ttl",
            "ExpressionAttributeValues": {
                **SPEND_VALUES,
                ":period": s("2023-11"),
                ":ttl": n(1705356830),
                ":cost": n("0.0012"),
            },
        }
    },
    {
        "Update": {
            **key("REQ#req_1", "REQ"),
            "UpdateExpression": "SET finished_at = :now, termination_reason = :reason,"
            " key_id = if_not_exists(key_id, :kid), expires_at = if_not_exists(expires_at, :ttl)"
            " REMOVE open_shard, lease_key, lease_until",
            # settled once, by whoever is first; over the tombstone of an admission given back (failed open)
            "ConditionExpression": "(attribute_not_exists(finished_at) OR termination_reason = :released)",
            **ALL_OLD,
            "ExpressionAttributeValues": {
                ":now": s("2023-11-14T22:13:51.150Z"),
                ":reason": s("stop"),
                ":kid": s("rk_a"),
                ":ttl": n(1700086430),
                ":released": s("released"),
            },
        }
    },
    {
        "Update": {
            **key("KEY#rk_a", "CONC"),
            "UpdateExpression": "ADD active :minus",
            "ExpressionAttributeValues": {":minus": n(-1)},
        }
    },
    {
        "Update": {
            **key("KEY#rk_a", "RATE#28333333"),
            "UpdateExpression": "ADD tokens :delta SET expires_at = if_not_exists(expires_at, :ttl)",
            "ExpressionAttributeValues": {":delta": n(-50), ":ttl": n(1700000340)},
        }
    },
]


def test_settlement_is_one_transaction_of_record_spend_finish_lease_and_tokens(stubbed: Any) -> None:
    client, stubber = stubbed
    # GIVEN a finished stream that held a lease, used 50 tokens fewer than it reserved, and reserved $0.005 of
    # budget for a cost of $0.0012
    record = UsageRecord(
        key_id="rk_a",
        request_id="req_1",
        model="gpt-4o-mini",
        started_epoch=NOW + 0.25,
        termination_reason="stop",
        prompt_tokens=10,
        completion_tokens=20,
        cost_usd=Decimal("0.0012"),
        ttft_ms=Decimal("150.5"),
        duration_ms=Decimal(900),
        mode="sse",
    )
    expected = {"TransactItems": SETTLEMENT, "ClientRequestToken": TOKEN}
    stubber.add_response("transact_write_items", {}, expected)
    # WHEN it is settled THEN exactly this request goes out, once, and it settled the request
    assert LimitsStore(TABLE, client).settle(Settlement(record, 30, "l_req_1", -50, 28333333, Decimal("0.005")))


TOKEN = hashlib.sha256(b"relay:req_1:settle").hexdigest()[:36]


def test_a_settlement_that_finds_the_request_finished_counts_nothing(stubbed: Any) -> None:
    client, stubber = stubbed
    # GIVEN a request the reconciler settled already: the finish condition fails
    record = UsageRecord("rk_a", "req_1", "gpt-4o-mini", NOW, "stop", mode="sse")
    reasons = [{"Code": "None"}] * 3 + [{"Code": "ConditionalCheckFailed"}]
    stubber.add_client_error(
        "transact_write_items", "TransactionCanceledException", modeled_fields={"CancellationReasons": reasons}
    )
    # WHEN the finalization's settlement arrives THEN it reports "settled already" and is not retried
    assert LimitsStore(TABLE, client).settle(Settlement(record, 30)) is False
