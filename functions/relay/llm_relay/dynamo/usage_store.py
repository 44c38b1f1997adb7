"""Usage in DynamoDB: the record of a refused request, and the reads of `llm-relay usage` (a key's records by
time range, every key's by day on `gsi1`, the spend aggregates). The record of an admitted request is written
by the settlement transaction (limits_store.py), with the spend it adds. Items: see layout.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from ..limits.rules import day_of
from ..usage import SECONDS_PER_DAY, UsageRecord, iso_ms
from . import layout
from .client import CONDITION_FAILED, error_code, store_call
from .store_base import TableStore

if TYPE_CHECKING:
    pass


T = TypeVar("T")
READ_THREADS = 8  # the gsi1 partitions of a report read at once (a client is thread-safe)


class UsageStore(TableStore):
    def put_refused(self, record: UsageRecord, retention_days: int, shard: int = 0) -> None:
        """The record of a request refused by a limit (nothing to settle), in the partition of the key's shard that
        refused it. Written once: a retry that finds it already there is done."""
        try:
            with store_call("PutItem"):
                self.client.put_item(
                    TableName=self.table_name,
                    Item=layout.serialize(layout.usage_item(record, retention_days, shard)),
                    ConditionExpression="attribute_not_exists(pk)",
                )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise

    def for_key(self, key_id: str, since_s: float, until_s: float, shards: int = 1) -> list[UsageRecord]:
        """One key's records with `since_s <= started < until_s`, oldest first: one Query per partition of its first
        `shards` shards (`layout.MAX_SHARDS` reads every partition a key may have used)."""

        def one(pk: str) -> list[UsageRecord]:
            bounds = {":pk": pk, ":lo": layout.usage_sk(since_s), ":hi": layout.usage_sk(until_s)}
            return list(
                self._query(
                    KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
                    ExpressionAttributeValues=layout.serialize(bounds),
                    ConsistentRead=True,
                )
            )

        parts = self._each(one, layout.partitions(key_id, shards))
        return sorted((record for part in parts for record in part), key=lambda r: (r.timestamp, r.request_id))

    def for_all(self, since_s: float, until_s: float) -> list[UsageRecord]:
        """Every key's records in the range, oldest first: one GSI Query (paginated) per partition of each UTC day
        (its shards, and the one partition of a table written before them), `READ_THREADS` at a time."""
        partitions: list[str] = []
        day_start = since_s - since_s % SECONDS_PER_DAY
        while day_start < until_s:
            partitions += layout.usage_day_partitions(day_of(day_start))
            day_start += SECONDS_PER_DAY

        def day_partition(gsi1pk: str) -> list[UsageRecord]:
            bounds = {":day": gsi1pk, ":lo": iso_ms(since_s), ":hi": iso_ms(until_s)}
            return list(
                self._query(
                    IndexName=layout.INDEX,
                    KeyConditionExpression="gsi1pk = :day AND gsi1sk BETWEEN :lo AND :hi",
                    ExpressionAttributeValues=layout.serialize(bounds),
                )
            )

        parts = self._each(day_partition, partitions)
        return sorted((record for part in parts for record in part), key=lambda r: (r.timestamp, r.request_id))

    def spend(self, key_id: str, period: str, shards: int = 1) -> dict[str, Any]:
        """A spend aggregate: `period` is `D#<yyyy-mm-dd>` or `M#<yyyy-mm>`; {} when nothing was spent. A key with
        shards has an item per shard, in the shard's partition: one Query each for its first `shards` shards, and
        their counts added up; `committed_usd` is then what the requests hold (the blocks the key's own item handed
        to its shards are not counted twice)."""

        def one(pk: str) -> list[dict[str, Any]]:
            bounds = {":pk": pk, ":sk": layout.spend_sk(period)}
            with store_call("Query"):
                out = self.client.query(
                    TableName=self.table_name,
                    KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
                    ExpressionAttributeValues=layout.serialize(bounds),
                    ConsistentRead=True,
                )
            return [layout.deserialize(raw) for raw in out.get("Items", [])]

        items = [item for part in self._each(one, layout.partitions(key_id, shards)) for item in part]
        if not items:
            return {}
        total: dict[str, Any] = {**items[0]}
        for item in items[1:]:
            for name, value in item.items():
                if isinstance(value, Decimal) and name not in ("expires_at",):
                    total[name] = total.get(name, Decimal(0)) + value
        total["committed_usd"] = total.get("committed_usd", Decimal(0)) - total.pop("granted_usd", Decimal(0))
        total.pop("headroom_usd", None)
        return total

    def _each(self, read: Callable[[str], list[T]], partitions: list[str]) -> list[list[T]]:
        """`read` of each partition, `READ_THREADS` at a time (one alone in this thread)."""
        if len(partitions) == 1:
            return [read(partitions[0])]
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            return list(pool.map(read, partitions))

    def _query(self, **kwargs: Any) -> Iterator[UsageRecord]:
        kwargs["TableName"] = self.table_name
        while True:
            with store_call("Query"):
                page = self.client.query(**kwargs)
            for raw in page.get("Items", []):
                item = layout.deserialize(raw)
                if layout.is_usage_item(item):
                    yield layout.usage_record(item)
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
