"""Budget reservations in DynamoDB: the parts the admission and settlement transactions include, the extension
write a stream makes ahead of need, and the release a reconciler applies to a request that never finalized.

Each spend item (`SPEND#D#<day>`, `SPEND#M#<month>`, layout.py) carries `cost_usd` (actual spend),
`reserved_usd` (outstanding reservations) and `committed_usd` (both together). Budgets are conditions on
`committed_usd` only, since a condition cannot add two attributes: `committed_usd <= budget - amount`.
The in-flight request item carries `reserved_usd`, the total its request holds, so whoever settles it (the
relay's finalization, or the ledger's reconciler) knows what to release.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..limits.budgets import BudgetPeriod, room, shard_period
from ..limits.rules import SpendPeriods
from . import layout
from .client import unavailable
from .layout import serialize
from .store_base import Cancelled, TableStore, backoff, throttled_backoff

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

EXTEND_ATTEMPTS = 4
THROTTLED_ATTEMPTS = 8  # a throttled partition takes writes again in its next second: about 4 s of tries in all


def reserve_op(table: str, key_id: str, period: BudgetPeriod, amount: Decimal) -> dict[str, Any]:
    """Reserve `amount` on one spend item, if it fits the period's budget (unconditionally where there is none):
    the admission part, and each extension's. On a shard's item, if its headroom covers it (`refill_ops` otherwise)."""
    update: dict[str, Any] = {
        "TableName": table,
        "Key": serialize({"pk": layout.partition(key_id, period.shard), "sk": layout.spend_sk(period.item)}),
        "UpdateExpression": "ADD committed_usd :amount, reserved_usd :amount",
    }
    values: dict[str, Any] = {":amount": amount}
    if period.shard:  # headroom + committed = what the bank granted the shard, with a budget or without
        update["UpdateExpression"] += ", headroom_usd :minus"
        values[":minus"] = -amount
        if period.budget is not None:
            update["ConditionExpression"] = "headroom_usd >= :amount"
            update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    elif period.budget is not None:
        update["ConditionExpression"] = "attribute_not_exists(committed_usd) OR committed_usd <= :room"
        update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        values[":room"] = room(period.budget, amount)
    update["ExpressionAttributeValues"] = serialize(values)
    return {"Update": update}


def refill_ops(table: str, key_id: str, period: BudgetPeriod, block: Decimal) -> list[dict[str, Any]]:
    """A shard takes `block` from the bank (the key's own spend item of the period), if the bank's budget has room
    for it: the bank commits it as granted, the shard's headroom grows by it. One transaction."""
    assert period.budget is not None and period.shard
    bank = {
        "TableName": table,
        "Key": serialize({"pk": layout.partition(key_id), "sk": layout.spend_sk(period.period)}),
        "UpdateExpression": "ADD committed_usd :block, granted_usd :block",
        "ConditionExpression": "attribute_not_exists(committed_usd) OR committed_usd <= :room",
        "ExpressionAttributeValues": serialize({":block": block, ":room": room(period.budget, block)}),
    }
    shard = {
        "TableName": table,
        "Key": serialize({"pk": layout.partition(key_id, period.shard), "sk": layout.spend_sk(period.item)}),
        "UpdateExpression": "ADD headroom_usd :block",
        "ExpressionAttributeValues": serialize({":block": block}),
    }
    return [{"Update": bank}, {"Update": shard}]


def settle_adds(cost_usd: Decimal | None, reserved_usd: Decimal, shard: int = 0) -> tuple[list[str], dict[str, Any]]:
    """The ADD clauses that swap a reservation for the actual cost on a spend item (part of settlement's spend
    update): committed moves by cost - reserved, the reservation goes, and on a shard's item its headroom takes back
    what was reserved and not spent. Unknown cost (unpriced, admitted under `allow`) commits nothing; such a request
    reserved nothing."""
    cost = cost_usd if cost_usd is not None else Decimal(0)
    adds, values = ["committed_usd :committed"], {":committed": cost - reserved_usd}
    if reserved_usd:
        adds.append("reserved_usd :unreserve")
        values[":unreserve"] = -reserved_usd
    if shard:
        adds.append("headroom_usd :headroom")
        values[":headroom"] = reserved_usd - cost
    return adds, values


def release_ops(
    table: str,
    key_id: str,
    started_epoch: float,
    reserved_usd: Decimal,
    cost_usd: Decimal = Decimal(0),
    shard: int = 0,
) -> list[dict[str, Any]]:
    """The updates of a request's day's and month's spend items that release its reservation and commit
    `cost_usd` instead: for the release of an admission whose outcome was unknown (`LimitsStore.release_unknown`,
    cost 0), inside that transaction. (Settlement, the reconciler's included, swaps the reservation through
    `settle_adds` in its own spend updates.)"""
    adds, values = settle_adds(cost_usd, reserved_usd, shard)
    ops = []
    for period in (shard_period(period, shard) for period in SpendPeriods.at(started_epoch).both()):
        ops.append(
            {
                "Update": {
                    "TableName": table,
                    "Key": serialize({"pk": layout.partition(key_id, shard), "sk": layout.spend_sk(period)}),
                    "UpdateExpression": "ADD " + ", ".join(adds),
                    "ExpressionAttributeValues": serialize(values),
                }
            }
        )
    return ops


class BudgetStore(TableStore):
    """The one write a stream makes to extend its reservation."""

    def extend(
        self, key_id: str, request_id: str, periods: tuple[BudgetPeriod, ...], amount: Decimal, sequence: int
    ) -> bool:
        """Reserve `amount` more against every budget and note it on the request item, in one transaction:
        True if it fit, False if a budget refused (on a shard, once the bank also refused it a block). Retried on
        contention; raises StoreUnavailable otherwise."""
        items = [reserve_op(self.table_name, key_id, period, amount) for period in periods]
        items.append(self._note_on_request(request_id, amount))
        names = [period.item for period in periods] + ["request"]
        refilled = False
        for attempt in range(EXTEND_ATTEMPTS):
            try:  # a new token after a refill: the same items, but a second try of a refused transaction
                self.transact(items, self.token(request_id, f"extend{sequence}" + ("r" if refilled else "")))
                return True
            except Cancelled as cancelled:
                failed = cancelled.failures(names)
                if failed:
                    short = [period for period in periods if period.item in failed and period.shard]
                    if refilled or not short or len(short) < len(failed):
                        return False
                    refilled = True
                    for period in short:
                        headroom = Decimal(str((failed[period.item] or {}).get("headroom_usd", 0)))
                        if not self.refill(key_id, request_id, period, amount, headroom):
                            return False
                    continue
                if not cancelled.contention:
                    raise unavailable("TransactWriteItems", f"budget extension cancelled: {cancelled.codes}") from None
            time.sleep(backoff(attempt))
        raise unavailable("TransactWriteItems", "budget extension kept conflicting with other writes")

    def refill(
        self, key_id: str, request_id: str, period: BudgetPeriod, amount: Decimal, headroom: Decimal = Decimal(0)
    ) -> bool:
        """Give a shard's spend item a block from the bank, so that its `headroom` (as it was when it refused) can
        cover `amount`: True when given (a block, or just what is needed when the bank has room for that but not for
        a whole block), False when the bank's budget has no room for what is needed. A headroom below 0 (spent while
        the period had no budget) is made good first, so the bank counts it. Each call applies once: its own client
        request token, kept for its retries of an answer lost."""
        needed = amount - min(headroom, Decimal(0))
        call = uuid.uuid4().hex
        for block in dict.fromkeys((max(period.block(amount), needed), needed)):
            token = self.token(request_id, f"refill{period.item}:{call}:{block}")
            for attempt in itertools.count():
                try:
                    self.transact(refill_ops(self.table_name, key_id, period, block), token)
                    return True
                except Cancelled as cancelled:
                    if "ConditionalCheckFailed" in cancelled.codes:
                        break  # no room for this block: a smaller one, or refused
                    if not cancelled.contention:
                        raise unavailable("TransactWriteItems", f"budget refill cancelled: {cancelled.codes}") from None
                    if attempt + 1 >= EXTEND_ATTEMPTS and not cancelled.throttled:
                        raise unavailable("TransactWriteItems", "budget refill kept conflicting") from None
                    if attempt + 1 >= THROTTLED_ATTEMPTS:
                        raise unavailable("TransactWriteItems", "the bank's partition kept throttling") from None
                    time.sleep(throttled_backoff(attempt) if cancelled.throttled else backoff(attempt))
        return False

    def _note_on_request(self, request_id: str, amount: Decimal) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table_name,
                "Key": serialize(layout.request_key(request_id)),
                "UpdateExpression": "ADD reserved_usd :amount",
                # a request already settled (by the reconciler, its lease lapsed) must not reserve anew:
                # nobody would release it
                "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(finished_at)",
                "ExpressionAttributeValues": serialize({":amount": amount}),
            }
        }
