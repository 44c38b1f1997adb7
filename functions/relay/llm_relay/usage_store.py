"""DynamoDB adapter for reading usage: a key's records by time range (one Query on its partition), all
keys' records by day (one Query per day on `gsi1`), and the spend aggregates. Writes live in
limits_store.py (they share transactions with the limit items)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .limits import day_of
from .store import StoreUnavailable, deserialize, make_client, serialize
from .usage import SECONDS_PER_DAY, UsageRecord, iso_ms

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

INDEX = "gsi1"


class UsageStore:
    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self.client = client or make_client(None, "us-east-1")

    def for_key(self, key_id: str, since_s: float, until_s: float) -> list[UsageRecord]:
        """One key's records with `since_s <= started < until_s`, oldest first."""
        return [
            UsageRecord.from_item(item)
            for item in self._query(
                KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
                ExpressionAttributeValues=serialize(
                    {":pk": f"KEY#{key_id}", ":lo": f"USAGE#{iso_ms(since_s)}", ":hi": f"USAGE#{iso_ms(until_s)}"}
                ),
                ConsistentRead=True,
            )
        ]

    def for_all(self, since_s: float, until_s: float) -> list[UsageRecord]:
        """Every key's records in the range, oldest first: one GSI Query (paginated) per UTC day."""
        records: list[UsageRecord] = []
        day_start = since_s - since_s % SECONDS_PER_DAY
        while day_start < until_s:
            records += [
                UsageRecord.from_item(item)
                for item in self._query(
                    IndexName=INDEX,
                    KeyConditionExpression="gsi1pk = :day AND gsi1sk BETWEEN :lo AND :hi",
                    ExpressionAttributeValues=serialize(
                        {":day": f"USAGE#{day_of(day_start)}", ":lo": iso_ms(since_s), ":hi": iso_ms(until_s)}
                    ),
                )
            ]
            day_start += SECONDS_PER_DAY
        return records

    def spend(self, key_id: str, period: str) -> dict[str, Any]:
        """A spend aggregate: `period` is `D#<yyyy-mm-dd>` or `M#<yyyy-mm>`; {} when nothing was spent."""
        try:
            out = self.client.get_item(
                TableName=self.table_name,
                ConsistentRead=True,
                Key=serialize({"pk": f"KEY#{key_id}", "sk": f"SPEND#{period}"}),
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(_describe(exc)) from exc
        raw = out.get("Item")
        return deserialize(raw) if raw else {}

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        kwargs["TableName"] = self.table_name
        while True:
            try:
                page = self.client.query(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise StoreUnavailable(_describe(exc)) from exc
            for raw in page.get("Items", []):
                item = deserialize(raw)
                if "request_id" in item and "timestamp" in item:
                    yield item
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return f"DynamoDB {exc.response['Error']['Code']}"
    return type(exc).__name__
