"""In-flight requests in DynamoDB: the request item (`REQ#<id>`, see layout.py) admission writes, the cancel
mark a client sets on it from any instance, the cancel mark of a client-chosen id (`CCANCEL#…`, kept a few
minutes: its request may not have arrived yet), and the batched poll of both kinds of mark."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
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

    def cancel_client_request(self, key_id: str, client_request_id: str) -> None:
        """Mark a client-chosen id of `key_id` cancelled, whether or not its request exists yet (kept for
        `PENDING_CANCEL_TTL_S`); the request checks for it at admission and while it runs."""
        with store_call("UpdateItem"):
            self.client.update_item(
                TableName=self.table_name,
                Key=layout.serialize(layout.client_cancel_key(key_id, client_request_id)),
                UpdateExpression=(
                    "SET cancel_requested_at = if_not_exists(cancel_requested_at, :now), "
                    "key_id = :key, client_request_id = :cid, expires_at = :ttl"
                ),
                ExpressionAttributeValues=layout.serialize(
                    {
                        ":now": now_iso(),
                        ":key": key_id,
                        ":cid": client_request_id,
                        ":ttl": int(time.time()) + layout.PENDING_CANCEL_TTL_S,
                    }
                ),
            )

    def client_cancel_requested(self, key_id: str, client_request_id: str) -> bool:
        """Whether a cancel for this client id is waiting (strongly consistent: it may have been written an
        instant ago, by another instance)."""
        with store_call("GetItem"):
            out = self.client.get_item(
                TableName=self.table_name,
                Key=layout.serialize(layout.client_cancel_key(key_id, client_request_id)),
                ConsistentRead=True,
                ProjectionExpression="pk, expires_at",
            )
        item = out.get("Item")
        return item is not None and not _expired(layout.deserialize(item))

    def cancelled_among(
        self, request_ids: Iterable[str], client_ids: Mapping[str, tuple[str, str]] | None = None
    ) -> set[str]:
        """Which of these requests carry a cancel mark, on their own item or (`client_ids`: request id →
        (key id, client id)) on their client id's: one BatchGetItem per 100 items, however many streams."""
        by_pk = {layout.request_key(rid)["pk"]: rid for rid in request_ids}
        for rid, (key_id, client_id) in (client_ids or {}).items():
            by_pk[layout.client_cancel_key(key_id, client_id)["pk"]] = rid
        return {by_pk[pk] for pk in self._marked(list(by_pk))}

    def _marked(self, pks: list[str]) -> set[str]:
        """The partition keys among `pks` (request items and client cancel items) that carry a live cancel mark."""
        cancelled: set[str] = set()
        for start in range(0, len(pks), _BATCH):
            keys = [layout.serialize(layout.marked_item_key(pk)) for pk in pks[start : start + _BATCH]]
            request: dict[str, Any] = {
                self.table_name: {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "pk, cancel_requested_at, expires_at",
                }
            }
            while request:
                with store_call("BatchGetItem"):
                    out = self.client.batch_get_item(RequestItems=request)
                for raw in out.get("Responses", {}).get(self.table_name, []):
                    item = layout.deserialize(raw)
                    if _live_mark(item):
                        cancelled.add(str(item["pk"]))
                request = dict(out.get("UnprocessedKeys") or {})
        return cancelled


def _live_mark(item: dict[str, Any]) -> bool:
    return "cancel_requested_at" in item and not (layout.is_client_cancel(str(item["pk"])) and _expired(item))


def _expired(item: dict[str, Any]) -> bool:
    """TTL deletion lags by up to days: an expired pending cancel is ignored, not trusted to be gone."""
    expires = item.get("expires_at")
    return expires is not None and int(expires) < time.time()
