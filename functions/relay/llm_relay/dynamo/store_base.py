"""What every store of the table shares: the table's name and client, the client request token that makes a retried
transaction apply once, the transaction call that turns a cancellation into its reasons (`Cancelled`), and the
backoff between attempts that met contention (another transaction on the same items, a throttled partition)."""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from .client import TRANSACTION_CANCELLED, error_code, make_client, store_call, unavailable
from .layout import deserialize

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: Cancellation reasons that say "try again" rather than "no": another transaction held an item, or its partition
#: was throttled (`THROTTLED`: it takes writes again in its next second, not after a few milliseconds).
THROTTLED = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded"})
CONTENTION = frozenset({"TransactionConflict", *THROTTLED})


class TableStore:
    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self.client = client or make_client()

    def token(self, request_id: str, purpose: str) -> str:
        """A client request token (at most 36 characters) naming one write of one request in this table: a retry is
        applied once; another write, or the same request id in another table, never collides."""
        return hashlib.sha256(f"{self.table_name}:{request_id}:{purpose}".encode()).hexdigest()[:36]

    def transact(self, items: list[dict[str, Any]], token: str) -> None:
        """One TransactWriteItems; `Cancelled` (with its reasons) when DynamoDB cancelled it."""
        try:
            with store_call("TransactWriteItems"):
                self.client.transact_write_items(TransactItems=items, ClientRequestToken=token)  # type: ignore[arg-type]
        except ClientError as exc:
            if error_code(exc) != TRANSACTION_CANCELLED:
                raise
            raise Cancelled(exc.response.get("CancellationReasons", [])) from exc  # type: ignore[arg-type]


class Cancelled(Exception):
    """A cancelled transaction: its reasons, one per item in order."""

    def __init__(self, reasons: list[dict[str, Any]]) -> None:
        super().__init__("transaction cancelled")
        self.reasons = reasons
        self.codes = [str(reason.get("Code", "None")) for reason in reasons]
        self.contention = any(code in CONTENTION for code in self.codes)
        self.throttled = any(code in THROTTLED for code in self.codes)

    def failures(self, names: list[str]) -> dict[str, dict[str, Any] | None]:
        """The parts whose condition failed, with their items as they were (None: the item did not exist).
        Any other cancellation reason (validation, ...) is a store error, not a refusal."""
        failed: dict[str, dict[str, Any] | None] = {}
        for name, reason in zip(names, self.reasons, strict=False):
            code = reason.get("Code", "None")
            if code == "ConditionalCheckFailed":
                item = reason.get("Item")
                failed[name] = deserialize(item) if item else None
            elif code not in ("None", *CONTENTION):
                raise unavailable("TransactWriteItems", f"transaction cancelled: {code} on {name}")
        return failed


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: up to 20 ms, 40 ms, 80 ms, ... capped at 1 s."""
    return random.uniform(0, min(1.0, 0.02 * 2**attempt))


def throttled_backoff(attempt: int) -> float:
    """The pause after a throttled attempt: DynamoDB counts a partition's capacity per second, so a retry within the
    same second meets the same refusal; from 100 ms, doubling, with jitter, capped at 1 s."""
    return random.uniform(0.5, 1.0) * min(1.0, 0.1 * 2.0**attempt)
