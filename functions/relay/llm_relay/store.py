"""DynamoDB adapter: one table holds keys, in-flight requests (cancel marks) and, later, limits and usage.

Item layout (pk / sk):
    KEYHASH#<sha256>  KEY      key record, looked up on every authentication (cached in-process)
    KEY#<key_id>      META     the same record by public id, with the hash (list, revoke)
    REQ#<request_id>  REQ      an in-flight request: owner key, cancel mark, TTL `expires_at`

`ClientError` codes are translated here, at the edge: callers see `StoreUnavailable` or domain results.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .keys import ApiKey

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_ser = TypeSerializer()
_de = TypeDeserializer()


class StoreUnavailable(Exception):
    """DynamoDB could not be reached or kept throttling after botocore's own retries."""


def make_client(endpoint_url: str | None, region: str) -> DynamoDBClient:
    """One client per process. botocore retries throttling and transient errors itself (standard mode)."""
    config = Config(
        retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=2, read_timeout=5, max_pool_connections=64
    )
    return boto3.client("dynamodb", endpoint_url=endpoint_url, region_name=region, config=config)


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in item.items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def request_item(request_id: str, key_id: str, model: str, ttl_s: int) -> dict[str, Any]:
    """The in-flight request item (`REQ#<id>`), also written by the admission transaction (limits_store)."""
    return {
        "pk": f"REQ#{request_id}",
        "sk": "REQ",
        "key_id": key_id,
        "model": model,
        "started_at": now_iso(),
        "expires_at": int(time.time()) + ttl_s,
    }


class RelayStore:
    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self.client = client or make_client(None, "us-east-1")

    # --- keys -------------------------------------------------------------------------------------
    def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        item = self._get({"pk": f"KEYHASH#{key_hash}", "sk": "KEY"}, consistent=False)
        return ApiKey.from_item(item) if item else None

    def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key record and its hash, by public id."""
        item = self._get({"pk": f"KEY#{key_id}", "sk": "META"}, consistent=True)
        return (ApiKey.from_item(item), str(item["key_hash"])) if item else None

    def put_key(self, key: ApiKey, key_hash: str) -> None:
        """Create a key: both items in one transaction, refusing to overwrite an existing one."""
        self._write_key(key, key_hash, "attribute_not_exists(pk)")

    def replace_key(self, key: ApiKey, key_hash: str) -> None:
        """Rewrite both items of an existing key (revoke, new limits)."""
        self._write_key(key, key_hash, "attribute_exists(pk)")

    def _write_key(self, key: ApiKey, key_hash: str, condition: str) -> None:
        by_hash = {"pk": f"KEYHASH#{key_hash}", "sk": "KEY", **key.to_item()}
        by_id = {"pk": f"KEY#{key.key_id}", "sk": "META", "key_hash": key_hash, **key.to_item()}
        puts = [
            {"Put": {"TableName": self.table_name, "Item": serialize(item), "ConditionExpression": condition}}
            for item in (by_hash, by_id)
        ]
        self._call(self.client.transact_write_items, TransactItems=puts)

    def list_keys(self) -> list[tuple[ApiKey, str]]:
        keys: list[tuple[ApiKey, str]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "sk = :meta",
            "ExpressionAttributeValues": {":meta": {"S": "META"}},
        }
        while True:
            page = self._call(self.client.scan, **kwargs)
            for raw in page.get("Items", []):
                item = deserialize(raw)
                keys.append((ApiKey.from_item(item), str(item["key_hash"])))
            if "LastEvaluatedKey" not in page:
                return keys
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # --- in-flight requests and cancel marks --------------------------------------------------------
    def request_cancel(self, request_id: str, key_id: str) -> dict[str, Any] | None:
        """Set the cancel mark if the request exists and belongs to `key_id`. None: unknown or foreign."""
        try:
            out = self.client.update_item(
                TableName=self.table_name,
                Key=serialize({"pk": f"REQ#{request_id}", "sk": "REQ"}),
                UpdateExpression="SET cancel_requested_at = if_not_exists(cancel_requested_at, :now)",
                ConditionExpression="attribute_exists(pk) AND key_id = :key",
                ExpressionAttributeValues=serialize({":now": now_iso(), ":key": key_id}),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise StoreUnavailable(str(exc)) from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return deserialize(out["Attributes"])

    def cancelled_among(self, request_ids: Iterable[str]) -> set[str]:
        """Which of these requests carry a cancel mark: one BatchGetItem per 100 ids."""
        ids = list(request_ids)
        cancelled: set[str] = set()
        for start in range(0, len(ids), 100):
            keys = [serialize({"pk": f"REQ#{rid}", "sk": "REQ"}) for rid in ids[start : start + 100]]
            request: dict[str, Any] = {
                self.table_name: {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "pk, cancel_requested_at",
                }
            }
            while request:
                out = self._call(self.client.batch_get_item, RequestItems=request)
                for raw in out.get("Responses", {}).get(self.table_name, []):
                    item = deserialize(raw)
                    if "cancel_requested_at" in item:
                        cancelled.add(str(item["pk"]).removeprefix("REQ#"))
                request = out.get("UnprocessedKeys") or {}
        return cancelled

    # --- plumbing ---------------------------------------------------------------------------------
    def _get(self, key: dict[str, Any], *, consistent: bool) -> dict[str, Any] | None:
        out = self._call(self.client.get_item, TableName=self.table_name, Key=serialize(key), ConsistentRead=consistent)
        raw = out.get("Item")
        return deserialize(raw) if raw else None

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                raise
            raise StoreUnavailable(f"DynamoDB {code}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
