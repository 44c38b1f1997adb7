"""In-flight requests in DynamoDB: the request item (`REQ#<id>`, see layout.py) admission writes, the cancel
mark a client sets on it from any instance, and the batched poll of the marks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..keys import now_iso
from . import layout
from .client import CONDITION_FAILED, error_code, make_client, store_call

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_BATCH = 100  # BatchGetItem's limit


class RequestStore:
    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self.client = client or make_client()

    def put(self, request_item: dict[str, Any]) -> None:
        """The in-flight request item alone: the admission of a key without limits."""
        with store_call("PutItem"):
            self.client.put_item(TableName=self.table_name, Item=layout.serialize(request_item))

    def request_cancel(self, request_id: str, key_id: str) -> dict[str, Any] | None:
        """Set the cancel mark if the request exists and belongs to `key_id`; the item as it now is. None:
        unknown or another key's (one answer for both, so a key cannot probe for other keys' requests)."""
        try:
            with store_call("UpdateItem"):
                out = self.client.update_item(
                    TableName=self.table_name,
                    Key=layout.serialize(layout.request_key(request_id)),
                    UpdateExpression="SET cancel_requested_at = if_not_exists(cancel_requested_at, :now)",
                    ConditionExpression="attribute_exists(pk) AND key_id = :key",
                    ExpressionAttributeValues=layout.serialize({":now": now_iso(), ":key": key_id}),
                    ReturnValues="ALL_NEW",
                )
        except ClientError as exc:
            if error_code(exc) == CONDITION_FAILED:
                return None
            raise
        return layout.deserialize(out["Attributes"])

    def cancelled_among(self, request_ids: Iterable[str]) -> set[str]:
        """Which of these requests carry a cancel mark: one BatchGetItem per 100 ids, however many streams."""
        ids = list(request_ids)
        cancelled: set[str] = set()
        for start in range(0, len(ids), _BATCH):
            keys = [layout.serialize(layout.request_key(rid)) for rid in ids[start : start + _BATCH]]
            request: dict[str, Any] = {
                self.table_name: {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "pk, cancel_requested_at",
                }
            }
            while request:
                with store_call("BatchGetItem"):
                    out = self.client.batch_get_item(RequestItems=request)
                for raw in out.get("Responses", {}).get(self.table_name, []):
                    item = layout.deserialize(raw)
                    if "cancel_requested_at" in item:
                        cancelled.add(layout.request_id_of(str(item["pk"])))
                request = dict(out.get("UnprocessedKeys") or {})
        return cancelled
