"""The local DynamoDB with throttling on (`MotoServer(throttle=...)`, `make dynamodb THROTTLE=1`), through boto3: a
hot partition key, of the table or of an index, is refused as DynamoDB refuses it, and nothing else is.

The clients make one attempt (botocore's standard mode would retry a ProvisionedThroughputExceededException once,
as the relay's client does), so each answer is the server's own. Most tests hold the server's clock still, so a
partition's second cannot end in the middle of a test; one lets it run and waits for the capacity to come back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from llm_relay_dev.local_dynamodb import MotoServer
from llm_relay_dev.table import create_table
from llm_relay_dev.throttled_front import STATS_PATH
from llm_relay_dev.throttling import Throttle

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

WRITES_PER_S = 20
READS_PER_S = 60
ONE_ATTEMPT = Config(retries={"total_max_attempts": 1, "mode": "standard"})
THROTTLED = "ProvisionedThroughputExceededException"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Local:
    server: MotoServer
    throttle: Throttle
    client: DynamoDBClient
    table: str
    clock: Clock

    def put(self, pk: str, sk: str = "S", **attrs: str) -> None:
        item = {"pk": {"S": pk}, "sk": {"S": sk}, **{k: {"S": v} for k, v in attrs.items()}}
        self.client.put_item(TableName=self.table, Item=item)

    def get(self, pk: str, sk: str = "S") -> dict[str, Any] | None:
        key = {"pk": {"S": pk}, "sk": {"S": sk}}
        found: dict[str, Any] | None = self.client.get_item(TableName=self.table, Key=key).get("Item")
        return found

    def until_throttled(self, write: Any, limit: int = 10 * WRITES_PER_S) -> int:
        """Call `write(i)` until it is throttled; how many went through."""
        for done in range(limit):
            try:
                write(done)
            except ClientError as exc:
                assert error_code(exc) == THROTTLED, exc.response
                return done
        raise AssertionError(f"{limit} writes and no throttle")


def throttling_reasons(exc: ClientError) -> list[dict[str, str]]:
    reasons: list[dict[str, str]] = exc.response.get("ThrottlingReasons", [])  # type: ignore[assignment]
    return reasons


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


def _serve(throttle: Throttle, clock: Clock) -> Iterator[Local]:
    server = MotoServer(throttle=throttle)
    with server as endpoint:
        client = boto3.client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=ONE_ATTEMPT,
        )
        table = f"throttled-{uuid.uuid4().hex[:8]}"
        create_table(client, table)
        yield Local(server, throttle, client, table, clock)


@pytest.fixture
def local() -> Iterator[Local]:
    """A throttled local DynamoDB whose clock stands still until a test moves it."""
    clock = Clock()
    yield from _serve(Throttle(WRITES_PER_S, READS_PER_S, clock=clock), clock)


def test_a_hot_partition_refuses_puts_and_updates_and_a_cold_one_beside_it_does_not(local: Local) -> None:
    # GIVEN one partition key written as fast as the client can
    done = local.until_throttled(lambda i: local.put("KEY#hot", f"S{i}"))
    # THEN it took its second's capacity (1 unit per small item) and then refused, as DynamoDB does
    assert done == WRITES_PER_S
    # AND an update on it is refused too, and changes nothing
    with pytest.raises(ClientError) as refused:
        local.client.update_item(
            TableName=local.table,
            Key={"pk": {"S": "KEY#hot"}, "sk": {"S": "S0"}},
            UpdateExpression="SET n = :n",
            ExpressionAttributeValues={":n": {"N": "1"}},
        )
    assert error_code(refused.value) == THROTTLED
    reasons = throttling_reasons(refused.value)
    assert [r["reason"] for r in reasons] == ["TableWriteKeyRangeThroughputExceeded"]
    assert reasons[0]["resource"].endswith(f":table/{local.table}")
    assert local.get("KEY#hot", "S0") == {"pk": {"S": "KEY#hot"}, "sk": {"S": "S0"}}
    # AND a cold partition beside it takes writes in the same second
    local.put("KEY#cold")
    assert local.get("KEY#cold") is not None
    # AND the counters say which partition was throttled, how often, and what each consumed
    assert local.server.throttle is local.throttle
    assert dict(local.throttle.throttled) == {(local.table, "KEY#hot"): 2}
    assert local.throttle.consumed_write[(local.table, "KEY#hot")] == WRITES_PER_S
    assert local.throttle.consumed_write[(local.table, "KEY#cold")] == 1


def test_a_throttled_transaction_is_cancelled_with_a_throttling_reason_and_applies_nothing(local: Local) -> None:
    # GIVEN a hot partition, and an item on a cold one
    local.until_throttled(lambda i: local.put("KEY#hot", f"S{i}"))
    local.put("KEY#cold", n="before")
    # WHEN a transaction writes the cold item and one on the hot partition
    with pytest.raises(ClientError) as cancelled:
        local.client.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": local.table,
                        "Key": {"pk": {"S": "KEY#cold"}, "sk": {"S": "S"}},
                        "UpdateExpression": "SET n = :n",
                        "ExpressionAttributeValues": {":n": {"S": "after"}},
                    }
                },
                {"Put": {"TableName": local.table, "Item": {"pk": {"S": "KEY#hot"}, "sk": {"S": "new"}}}},
            ]
        )
    # THEN it is cancelled: ThrottlingError for the hot item, None for the other
    assert error_code(cancelled.value) == "TransactionCanceledException"
    reasons: list[dict[str, Any]] = cancelled.value.response.get("CancellationReasons", [])  # type: ignore[assignment]
    assert [r["Code"] for r in reasons] == ["None", "ThrottlingError"]
    # AND nothing was applied
    assert local.get("KEY#cold") == {"pk": {"S": "KEY#cold"}, "sk": {"S": "S"}, "n": {"S": "before"}}
    assert local.get("KEY#hot", "new") is None


def test_a_hot_index_partition_throttles_base_table_writes_that_update_it(local: Local) -> None:
    # GIVEN items on distinct table partitions that all share one gsi1 partition
    done = local.until_throttled(lambda i: local.put(f"KEY#{i}", gsi1pk="G#hot", gsi1sk=str(i)))
    # THEN the index partition's capacity bounds them, though no table partition is hot
    assert done == WRITES_PER_S
    with pytest.raises(ClientError) as refused:
        local.put("KEY#fresh", gsi1pk="G#hot", gsi1sk="x")
    reasons = throttling_reasons(refused.value)
    assert [r["reason"] for r in reasons] == ["IndexWriteKeyRangeThroughputExceeded"]
    assert reasons[0]["resource"].endswith(f":table/{local.table}/index/gsi1")
    assert local.get("KEY#fresh") is None
    # AND a write that does not touch that index partition goes through
    local.put("KEY#fresh", gsi1pk="G#cold", gsi1sk="x")
    local.put("KEY#other")
    assert local.throttle.throttled[(f"{local.table}/index/gsi1", "G#hot")] == 2


def test_reads_are_throttled_by_partition_and_a_batch_leaves_the_hot_keys_unprocessed(local: Local) -> None:
    # GIVEN a partition whose read capacity is used up by strongly consistent reads (1 unit each)
    local.put("KEY#hot")
    local.put("KEY#cold")
    key = {"pk": {"S": "KEY#hot"}, "sk": {"S": "S"}}
    for _ in range(READS_PER_S):
        local.client.get_item(TableName=local.table, Key=key, ConsistentRead=True)
    # THEN the next read and a query of it are refused
    for read in (
        lambda: local.client.get_item(TableName=local.table, Key=key, ConsistentRead=True),
        lambda: local.client.query(
            TableName=local.table,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "KEY#hot"}},
        ),
    ):
        with pytest.raises(ClientError) as refused:
            read()
        assert error_code(refused.value) == THROTTLED
    # AND a batch of both keys answers the cold one and leaves the hot one unprocessed
    cold = {"pk": {"S": "KEY#cold"}, "sk": {"S": "S"}}
    out = local.client.batch_get_item(RequestItems={local.table: {"Keys": [key, cold], "ConsistentRead": True}})
    assert [item["pk"]["S"] for item in out["Responses"][local.table]] == ["KEY#cold"]
    assert out["UnprocessedKeys"][local.table]["Keys"] == [key]
    # AND writes to the hot partition are not affected by its reads
    local.put("KEY#hot", "other")


def test_the_counters_are_served_to_other_processes(local: Local) -> None:
    local.until_throttled(lambda i: local.put("KEY#hot", f"S{i}"))
    stats = httpx.get(local.server.endpoint + STATS_PATH, timeout=10).json()
    assert stats["throttled"] == [{"resource": local.table, "partition": "KEY#hot", "count": 1}]
    assert {"resource": local.table, "partition": "KEY#hot", "units": WRITES_PER_S} in stats["consumed_write"]


def test_capacity_comes_back_in_the_next_second() -> None:
    # GIVEN a real clock, sped up: a partition's second lasts 0.5 wall seconds
    clock = Clock()
    throttle = Throttle(WRITES_PER_S, READS_PER_S, scale=0.5)
    for local in _serve(throttle, clock):
        # WHEN a partition is throttled
        local.until_throttled(lambda i, put=local.put: put("KEY#hot", f"S{i}"))
        throttled_at = time.monotonic()
        # THEN a write to it goes through again once its second has ended, and not long after
        deadline = throttled_at + 5
        while True:
            try:
                local.put("KEY#hot", "again")
                break
            except ClientError as exc:
                assert error_code(exc) == THROTTLED
                assert time.monotonic() < deadline, "the partition never took writes again"
        assert local.get("KEY#hot", "again") is not None
        assert time.monotonic() - throttled_at <= 0.5 + 0.5  # within the window (plus one call's slack)
