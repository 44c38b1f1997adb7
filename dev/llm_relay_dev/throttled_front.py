"""In front of the local moto, DynamoDB's per-partition throttling (`make dynamodb THROTTLE=1`): every write and
read the relay makes is charged to its partitions (`throttling.py`), and a request they cannot take now is refused
as DynamoDB refuses it.

- PutItem, UpdateItem, DeleteItem, GetItem, Query: `ProvisionedThroughputExceededException` (HTTP 400) with its
  `ThrottlingReasons` (`TableWriteKeyRangeThroughputExceeded`, `IndexWriteKeyRangeThroughputExceeded`, ...). That is
  DynamoDB's answer to a hot partition in on-demand mode as in provisioned mode; `ThrottlingException` is kept for
  an on-demand table's own maximum throughput and for control-plane calls, neither of which a partition's limit is.
  botocore retries it (standard mode), as it would DynamoDB's.
- TransactWriteItems: `TransactionCanceledException`, the reason `ThrottlingError` for each throttled item and
  `None` for the others (their own reason if a condition failed too), nothing applied. botocore does not retry it.
- BatchGetItem: the keys whose partitions are hot come back in `UnprocessedKeys`; if every key is, the call is
  refused with `ProvisionedThroughputExceededException`.

A write is charged by the larger of the item before and after it, so it runs in moto first (the server lets one
request at a time in, so nothing else sees it) and, if it is throttled, the touched items are put back as they were.
A failed condition still costs its units, as in DynamoDB; a request moto refuses for another reason costs nothing.
Scan, and anything else, passes uncharged.

`GET /_local/throttle` answers the counters (`Throttle.stats()`) for a process that does not hold the server.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from .throttling import (
    Charge,
    Item,
    Schema,
    Throttle,
    index_resource,
    item_size,
    partition_of,
    read_charge,
    sort_of,
    write_charges,
)
from .throttling import Index as IndexSchema

STATS_PATH = "/_local/throttle"
_TARGET = "DynamoDB_20120810."
_PREFIX = "com.amazonaws.dynamodb.v20120810#"
_HOT = (
    "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically scaling your table or "
    "index so please try again shortly. If exceptions persist, check if you have a hot key: "
    "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html"
)
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/")
_EQUALS = re.compile(r"([#\w.]+)\s*=\s*(:[\w]+)")

WSGIApp = Callable[..., Iterable[bytes]]
_Answer = tuple[str, list[tuple[str, str]], bytes]


class ThrottleFront:
    """WSGI middleware: charges each request to its partitions in `throttle`, and refuses what they cannot take."""

    def __init__(self, app: WSGIApp, throttle: Throttle) -> None:
        self._app = app
        self.throttle = throttle

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == STATS_PATH:
            return _reply(start_response, ("200 OK", _JSON, json.dumps(self.throttle.stats()).encode()))
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        operation = target.removeprefix(_TARGET) if target.startswith(_TARGET) else ""
        handler = self._handlers().get(operation)
        if handler is None:
            return self._app(environ, start_response)
        request = json.loads(_read_body(environ) or b"{}")
        return _reply(start_response, handler(environ, request))

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], dict[str, Any]], _Answer]]:
        return {
            "PutItem": self._write,
            "UpdateItem": self._write,
            "DeleteItem": self._write,
            "TransactWriteItems": self._transact,
            "GetItem": self._get,
            "BatchGetItem": self._batch_get,
            "Query": self._query,
        }

    def _run(self, environ: dict[str, Any]) -> _Answer:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, list(headers)
            return lambda _: None

        body = b"".join(self._app(environ, capture))
        return captured["status"], captured["headers"], body

    # --- writes ----------------------------------------------------------------------------------------------
    def _write(self, environ: dict[str, Any], request: dict[str, Any]) -> _Answer:
        backend = _backend(environ)
        schema = _schema(backend, request["TableName"])
        key = request.get("Key") or schema.key_of(request["Item"])
        before = _stored(backend, schema.table, key)
        answer = self._run(environ)
        if not _charged(answer):
            return answer
        after = _stored(backend, schema.table, key)
        refused = self.throttle.admit([write_charges(schema, key, before, after, transactional=False)])
        if not refused[0]:
            return answer
        _restore(backend, [(schema.table, key, before)])
        return _throttled(backend, schema, refused[0])

    def _transact(self, environ: dict[str, Any], request: dict[str, Any]) -> _Answer:
        backend = _backend(environ)
        items = []
        for entry in request.get("TransactItems", []):
            ((kind, op),) = entry.items()
            schema = _schema(backend, op["TableName"])
            key = op.get("Key") or schema.key_of(op["Item"])
            items.append((kind, schema, key, _stored(backend, schema.table, key)))
        answer = self._run(environ)
        applied = answer[0].startswith("200")
        moto_reasons = _cancellation_reasons(answer)
        if not applied and moto_reasons is None:
            return answer  # a validation error: DynamoDB charges nothing
        groups = []
        for kind, schema, key, before in items:
            after = before if kind == "ConditionCheck" or not applied else _stored(backend, schema.table, key)
            groups.append(write_charges(schema, key, before, after, transactional=True))
        refused = self.throttle.admit(groups)
        if not any(refused):
            return answer
        if applied:
            _restore(backend, [(schema.table, key, before) for _, schema, key, before in items])
        reasons = [
            {"Code": "ThrottlingError", "Message": _HOT}
            if over
            else (moto_reasons or [{"Code": "None"}] * len(items))[i]
            for i, over in enumerate(refused)
        ]
        codes = ", ".join(str(r.get("Code")) for r in reasons)
        body = {
            "__type": _PREFIX + "TransactionCanceledException",
            "Message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
            "CancellationReasons": reasons,
        }
        return "400 Bad Request", _JSON, json.dumps(body).encode()

    # --- reads -----------------------------------------------------------------------------------------------
    def _get(self, environ: dict[str, Any], request: dict[str, Any]) -> _Answer:
        backend = _backend(environ)
        schema = _schema(backend, request["TableName"])
        key = request["Key"]
        size = item_size(_stored(backend, schema.table, key))
        part = partition_of(key[schema.hash_key])
        charge = read_charge(schema.table, part, size, consistent=_consistent(request), item=sort_of(schema, key))
        refused = self.throttle.admit([[charge]])
        return _throttled(backend, schema, refused[0]) if refused[0] else self._run(environ)

    def _batch_get(self, environ: dict[str, Any], request: dict[str, Any]) -> _Answer:
        backend = _backend(environ)
        wanted: list[tuple[str, dict[str, Any], Charge]] = []
        for table, spec in request.get("RequestItems", {}).items():
            schema = _schema(backend, table)
            for key in spec.get("Keys", []):
                size = item_size(_stored(backend, schema.table, key))
                part = partition_of(key[schema.hash_key])
                charge = read_charge(schema.table, part, size, consistent=_consistent(spec), item=sort_of(schema, key))
                wanted.append((table, key, charge))
        refused = self.throttle.admit([[charge] for _, _, charge in wanted], all_or_nothing=False)
        if wanted and all(refused):
            return _throttled(backend, _schema(backend, wanted[0][0]), refused[0])
        if not any(refused):
            return self._run(environ)
        served: dict[str, Any] = {}
        unprocessed: dict[str, Any] = {}
        for (table, key, _), over in zip(wanted, refused, strict=True):
            into = unprocessed if over else served
            spec = into.setdefault(table, {**request["RequestItems"][table], "Keys": []})
            spec["Keys"].append(key)
        _replace_body(environ, {**request, "RequestItems": served})
        status, headers, body = self._run(environ)
        if not status.startswith("200"):
            return status, headers, body
        out = json.loads(body)
        out["UnprocessedKeys"] = unprocessed
        return status, _JSON, json.dumps(out).encode()

    def _query(self, environ: dict[str, Any], request: dict[str, Any]) -> _Answer:
        backend = _backend(environ)
        schema = _schema(backend, request["TableName"])
        index = schema.index(request["IndexName"]) if request.get("IndexName") else None
        hash_key = index.hash_key if index else schema.hash_key
        answer = self._run(environ)
        value = _hash_value(request, hash_key)
        if not answer[0].startswith("200") or value is None:
            return answer
        size = sum(_read_size(backend, schema, index, item) for item in json.loads(answer[2]).get("Items", []))
        resource = index_resource(schema.table, index.name) if index else schema.table
        item = None if index else "*"  # a Query reads a range of the partition's items: counted as the partition's
        charge = read_charge(resource, partition_of(value), size, consistent=_consistent(request), item=item)
        refused = self.throttle.admit([[charge]])
        return _throttled(backend, schema, refused[0]) if refused[0] else answer


_JSON = [("Content-Type", "application/x-amz-json-1.0")]


def _reply(start_response: Callable[..., Any], answer: _Answer) -> list[bytes]:
    status, headers, body = answer
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"] + [("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


def _charged(answer: _Answer) -> bool:
    """Applied, or refused by its condition (which DynamoDB charges too)."""
    status, _, body = answer
    return status.startswith("200") or b"ConditionalCheckFailedException" in body


def _cancellation_reasons(answer: _Answer) -> list[dict[str, Any]] | None:
    if b"TransactionCanceledException" not in answer[2]:
        return None
    reasons: list[dict[str, Any]] = json.loads(answer[2]).get("CancellationReasons", [])
    return reasons


def _throttled(backend: Any, schema: Schema, over: list[Charge]) -> _Answer:
    """DynamoDB's answer to a hot partition, with a reason per throttled table or index."""
    arn = backend.get_table(schema.table).table_arn
    reasons = []
    for resource in dict.fromkeys(c.resource for c in over):
        side = "Index" if resource != schema.table else "Table"
        operation = "Write" if any(c.kind == "write" for c in over if c.resource == resource) else "Read"
        suffix = resource.removeprefix(schema.table)
        reasons.append({"reason": f"{side}{operation}KeyRangeThroughputExceeded", "resource": arn + suffix})
    body = {"__type": _PREFIX + "ProvisionedThroughputExceededException", "message": _HOT, "ThrottlingReasons": reasons}
    return "400 Bad Request", _JSON, json.dumps(body).encode()


def _backend(environ: dict[str, Any]) -> Any:
    """moto's DynamoDB backend of the request's account and region, as moto itself picks them."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.iam.models import get_account_id_from

    found = _CREDENTIAL.search(str(environ.get("HTTP_AUTHORIZATION", "")))
    access_key, region = found.groups() if found else ("AKIAEXAMPLE", "us-east-1")
    account = (
        os.environ.get("MOTO_ACCOUNT_ID") or environ.get("HTTP_X_MOTO_ACCOUNT_ID") or get_account_id_from(access_key)
    )
    return dynamodb_backends[account][region]


def _schema(backend: Any, table_name: str) -> Schema:
    table = backend.get_table(table_name)
    indexes = []
    for index in table.global_indexes:
        keys = {k["KeyType"]: k["AttributeName"] for k in index.schema}
        projection = index.projection or {}
        indexes.append(
            IndexSchema(
                index.name,
                keys["HASH"],
                keys.get("RANGE"),
                projection.get("ProjectionType", "ALL"),
                tuple(projection.get("NonKeyAttributes", ())),
            )
        )
    return Schema(table.name, table.hash_key_attr, table.range_key_attr, tuple(indexes))


def _stored(backend: Any, table: str, key: dict[str, Any]) -> Item | None:
    current = backend.get_item(table, key)
    return None if current is None else dict(current.to_json()["Attributes"])


def _restore(backend: Any, touched: list[tuple[str, dict[str, Any], Item | None]]) -> None:
    """Put the touched items (table, key, item before) back as they were before the throttled write."""
    for table, key, before in touched:
        if before is None:
            backend.delete_item(table, key)
        else:
            backend.put_item(table, before)


def _read_size(backend: Any, schema: Schema, index: IndexSchema | None, returned: Item) -> int:
    """What a Query read for one item: the stored item (or its index entry), whatever the projection returned."""
    stored = _stored(backend, schema.table, schema.key_of(returned)) or returned
    return item_size(schema.projected(index, stored) if index else stored)


def _hash_value(request: dict[str, Any], hash_key: str) -> dict[str, Any] | None:
    """The partition key value of a Query, from `<hash key> = :value` in its key condition."""
    names = request.get("ExpressionAttributeNames") or {}
    values = request.get("ExpressionAttributeValues") or {}
    for name, placeholder in _EQUALS.findall(request.get("KeyConditionExpression", "")):
        if names.get(name, name) == hash_key and placeholder in values:
            value: dict[str, Any] = values[placeholder]
            return value
    condition = (request.get("KeyConditions") or {}).get(hash_key)
    return condition["AttributeValueList"][0] if condition else None


def _consistent(request: dict[str, Any]) -> bool:
    return bool(request.get("ConsistentRead"))


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, put back for the app behind."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    return bytes(raw)


def _replace_body(environ: dict[str, Any], request: dict[str, Any]) -> None:
    raw = json.dumps(request).encode()
    environ["wsgi.input"] = io.BytesIO(raw)
    environ["CONTENT_LENGTH"] = str(len(raw))
