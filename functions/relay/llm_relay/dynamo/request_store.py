"""In-flight requests in DynamoDB: the request item (`REQ#<id>`, see layout.py) admission writes, the cancel
mark a client sets on it from any instance, the cancel mark of a client-chosen id (`CCANCEL#…`, kept a few
minutes: its request may not have arrived yet), and the batched poll of both kinds of mark; the ledger's lease
renewals with their checkpoints, and the two sparse indexes' reads (expired leases for the reconciler, a key's
earliest lease for a refusal's Retry-After)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..keys import now_iso
from . import layout
from .client import CONDITION_FAILED, TRANSACTION_CANCELLED, error_code, store_call, unavailable
from .store_base import TableStore

if TYPE_CHECKING:
    from ..ledger import Checkpoint

_BATCH = 100  # BatchGetItem's and TransactWriteItems' limit
SETTLED = "settled"  # a renewal refused: another party (a reconciler) settled the request
UNLEASED = "unleased"  # a renewal refused: the request has no lease (admitted without its item, failing open)
_UNFINISHED = "attribute_exists(lease_until) AND attribute_not_exists(finished_at)"


class RequestStore(TableStore):
    def put(self, request_item: dict[str, Any]) -> None:
        """The in-flight request item alone: the admission of a key without limits. Conditional, so a late copy
        cannot overwrite the finished item a release left (limits_store.release_unknown)."""
        try:
            with store_call("PutItem"):
                self.client.put_item(
                    TableName=self.table_name,
                    Item=layout.serialize(request_item),
                    ConditionExpression="attribute_not_exists(pk)",
                )
        except ClientError as exc:
            raise unavailable("PutItem", "the request was released during its admission") from exc

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

    # --- the ledger ------------------------------------------------------------------------------------------
    def get(self, request_id: str) -> dict[str, Any] | None:
        """The request item, read consistently (the indexes are eventually consistent: confirm before acting)."""
        with store_call("GetItem"):
            out = self.client.get_item(
                TableName=self.table_name, Key=layout.serialize(layout.request_key(request_id)), ConsistentRead=True
            )
        raw = out.get("Item")
        return layout.deserialize(raw) if raw else None

    def renew(self, lease_until: int, checkpoints: Mapping[str, Checkpoint | None]) -> dict[str, str]:
        """Extend the leases of these unfinished requests to `lease_until` and store each one's checkpoint
        (`layout.checkpoint_attributes`; None: the lease alone): one TransactWriteItems per 100 requests, however
        many streams the process runs (BatchWriteItem cannot update, and a Put would drop a cancel mark). Each update
        is conditional on the request being unfinished; the requests that are not are returned, each with why
        (`SETTLED`: another party, a reconciler, settled it; `UNLEASED`: it has no lease to renew, admitted without
        its item), and the rest renewed without them."""
        gone: dict[str, str] = {}
        ids = list(checkpoints)
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            while batch:
                refused = self._renew_batch(lease_until, batch, checkpoints)
                gone.update(refused)
                batch = [rid for rid in batch if rid not in refused] if refused else []
        return gone

    def _renew_batch(
        self, lease_until: int, ids: list[str], checkpoints: Mapping[str, Checkpoint | None]
    ) -> dict[str, str]:
        items: list[dict[str, Any]] = []
        for rid in ids:
            point = checkpoints[rid]
            attributes = {} if point is None else layout.checkpoint_attributes(point)
            values = {":lease": lease_until, **{f":{name}": value for name, value in attributes.items()}}
            sets = ["lease_until = :lease", *(f"{name} = :{name}" for name in attributes)]
            update = {
                "TableName": self.table_name,
                "Key": layout.serialize(layout.request_key(rid)),
                "UpdateExpression": "SET " + ", ".join(sets),
                "ConditionExpression": _UNFINISHED,
                "ExpressionAttributeValues": layout.serialize(values),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",  # why it was refused, without a second read
            }
            items.append({"Update": update})
        try:
            with store_call("TransactWriteItems"):
                self.client.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
        except ClientError as exc:
            if error_code(exc) != TRANSACTION_CANCELLED:
                raise
            reasons = exc.response.get("CancellationReasons", [])
            refused = {
                rid: SETTLED if "finished_at" in (reason.get("Item") or {}) else UNLEASED
                for rid, reason in zip(ids, reasons, strict=False)
                if reason.get("Code") == "ConditionalCheckFailed"
            }
            if not refused:  # a conflicting write (a cancel mark, a settlement): the next round renews
                codes = [str(r.get("Code", "None")) for r in reasons]
                raise unavailable("TransactWriteItems", f"renewal cancelled: {codes}") from exc
            return refused
        return {}

    def expired(self, shard: str, now_s: float, limit: int = 100) -> list[str]:
        """Unfinished requests of one open-index shard whose lease ended before `now_s`, earliest first: one
        Query on the sparse index, which holds only unfinished requests (no table scan)."""
        with store_call("Query"):
            out = self.client.query(
                TableName=self.table_name,
                IndexName=layout.OPEN_INDEX,
                KeyConditionExpression="open_shard = :s AND lease_until < :now",
                ExpressionAttributeValues=layout.serialize({":s": shard, ":now": int(now_s)}),
                Limit=limit,
            )
        return [layout.request_id_of(str(layout.deserialize(raw)["pk"])) for raw in out.get("Items", [])]

    def earliest_leases(self, key_id: str, limit: int = 5) -> list[tuple[str, int]]:
        """A key's unfinished requests with the earliest lease expiries (request id, epoch s): one Query with a
        small limit on the sparse `leases` index, however many streams the key has in flight."""
        with store_call("Query"):
            out = self.client.query(
                TableName=self.table_name,
                IndexName=layout.LEASE_INDEX,
                KeyConditionExpression="lease_key = :k",
                ExpressionAttributeValues=layout.serialize({":k": key_id}),
                Limit=limit,
            )
        found = [layout.deserialize(raw) for raw in out.get("Items", [])]
        return [(layout.request_id_of(str(item["pk"])), int(item["lease_until"])) for item in found]

    def slot_holders(self, key_id: str) -> list[str]:
        """Every unfinished request of a key that holds one of its concurrency slots (what its count must be): the
        key's entries on the sparse `leases` index, every page, each confirmed by a consistent read (the index is
        eventually consistent: a request settled an instant ago may still be on it)."""
        ids: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": layout.LEASE_INDEX,
            "KeyConditionExpression": "lease_key = :k",
            "ExpressionAttributeValues": layout.serialize({":k": key_id}),
        }
        while True:
            with store_call("Query"):
                page = self.client.query(**kwargs)
            ids += [layout.request_id_of(str(layout.deserialize(raw)["pk"])) for raw in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return [rid for rid, item in self._items(ids).items() if item.get("slot") and "finished_at" not in item]

    def _items(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        """These request items (consistent reads, one BatchGetItem per 100), by request id; missing ones left out."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(request_ids), _BATCH):
            keys = [layout.serialize(layout.request_key(rid)) for rid in request_ids[start : start + _BATCH]]
            request: dict[str, Any] = {
                self.table_name: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "pk, slot, finished_at"}
            }
            while request:
                with store_call("BatchGetItem"):
                    out = self.client.batch_get_item(RequestItems=request)
                for raw in out.get("Responses", {}).get(self.table_name, []):
                    item = layout.deserialize(raw)
                    found[layout.request_id_of(str(item["pk"]))] = item
                request = dict(out.get("UnprocessedKeys") or {})
        return found


def _live_mark(item: dict[str, Any]) -> bool:
    return "cancel_requested_at" in item and not (layout.is_client_cancel(str(item["pk"])) and _expired(item))


def _expired(item: dict[str, Any]) -> bool:
    """TTL deletion lags by up to days: an expired pending cancel is ignored, not trusted to be gone."""
    expires = item.get("expires_at")
    return expires is not None and int(expires) < time.time()
