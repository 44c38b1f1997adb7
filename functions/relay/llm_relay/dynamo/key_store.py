"""API keys in DynamoDB: each key is two items (by hash, by id; see layout.py), written together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..keys import ApiKey, now_iso
from . import layout
from .client import store_call
from .store_base import TableStore

if TYPE_CHECKING:
    pass


class KeyStore(TableStore):
    def get_by_hash(self, key_hash: str) -> ApiKey | None:
        """The authentication read: eventually consistent (a revocation already waits for the auth cache)."""
        item = self._get(layout.key_by_hash(key_hash), consistent=False)
        return layout.key_from_item(item) if item else None

    def get_by_id(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key record and its hash, by public id."""
        item = self._get(layout.key_by_id(key_id), consistent=True)
        return (layout.key_from_item(item), str(item["key_hash"])) if item else None

    def put(self, key: ApiKey, key_hash: str) -> None:
        """Create a key: both items in one transaction, refusing to overwrite an existing one."""
        self._write(key, key_hash, "attribute_not_exists(pk)")

    def replace(self, key: ApiKey, key_hash: str) -> None:
        """Rewrite both items of an existing key (revoke, new limits, expiry), and the item of its previous
        secret while that still works after a rotation, so a revocation reaches both secrets."""
        previous = self._previous(key.key_id)
        self._write(key, key_hash, "attribute_exists(pk)", previous=previous)

    def rotate(self, key: ApiKey, old_hash: str, new_hash: str, grace_until: str) -> None:
        """A new secret for `key`; the old one keeps working until `grace_until` (or the key's own expiry if
        sooner), after which its item is refused and deleted by the table's TTL. A secret still in the grace of an
        earlier rotation ends now: only one previous secret is remembered (and reached by a revocation)."""
        earlier = self._previous(key.key_id)
        ended = earlier[0] if earlier and earlier[0] != old_hash else None
        previous = (old_hash, grace_until)
        self._write(key, new_hash, "attribute_exists(pk)", previous=previous, new_hash=True, ended=ended)

    def _previous(self, key_id: str) -> tuple[str, str] | None:
        item = self._get(layout.key_by_id(key_id), consistent=True) or {}
        previous = layout.previous_secret(item)
        return previous if previous and not layout.expired_iso(previous[1]) else None

    def list_all(self) -> list[tuple[ApiKey, str]]:
        """Every key with its hash: a Scan for the by-id items (the CLI only; never on a request's path)."""
        keys: list[tuple[ApiKey, str]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "sk = :meta",
            "ExpressionAttributeValues": layout.serialize({":meta": layout.META_SK}),
        }
        while True:
            with store_call("Scan"):
                page = self.client.scan(**kwargs)
            for raw in page.get("Items", []):
                item = layout.deserialize(raw)
                keys.append((layout.key_from_item(item), str(item["key_hash"])))
            if "LastEvaluatedKey" not in page:
                return keys
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _write(
        self,
        key: ApiKey,
        key_hash: str,
        condition: str,
        *,
        previous: tuple[str, str] | None = None,
        new_hash: bool = False,
        ended: str | None = None,
    ) -> None:
        by_hash, by_id = layout.key_items(key, key_hash, previous=previous)
        items = [(by_hash, "attribute_not_exists(pk)" if new_hash else condition), (by_id, condition)]
        if previous is not None:
            items.append((layout.previous_secret_item(key, *previous), "attribute_exists(pk)"))
        if ended is not None:  # an older secret whose grace is cut short
            items.append((layout.previous_secret_item(key, ended, now_iso()), "attribute_exists(pk)"))
        puts: list[Any] = [
            {"Put": {"TableName": self.table_name, "Item": layout.serialize(item), "ConditionExpression": cond}}
            for item, cond in items
        ]
        with store_call("TransactWriteItems"):
            self.client.transact_write_items(TransactItems=puts)

    def _get(self, key: dict[str, str], *, consistent: bool) -> dict[str, Any] | None:
        with store_call("GetItem"):
            out = self.client.get_item(TableName=self.table_name, Key=layout.serialize(key), ConsistentRead=consistent)
        raw = out.get("Item")
        return layout.deserialize(raw) if raw else None
