"""Limit state in DynamoDB: the admission write before the upstream call and the settlement after the stream,
one TransactWriteItems each, and the counters' read for tests and the CLI. Items (rate windows, leases, spend,
usage records, the in-flight request): see layout.py.

Conditions are built from named parts, each with `ReturnValuesOnConditionCheckFailure=ALL_OLD`, so a refusal
names the parts that refused and carries their items: no second read. A transaction cancelled by conflicting
writes (`TransactionConflict`, throttling) is reported as contention for the caller to retry; any other
failure is `StoreUnavailable` (client.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..errors import StoreUnavailable
from ..ledger import Settlement
from ..limits.budgets import periods_of, shard_period
from ..limits.rules import CONCURRENCY, DAILY, MONTHLY, PREV, RATE, AdmissionPlan, SpendPeriods, Window
from ..usage import UsageRecord, iso_ms
from . import layout
from .budget_store import release_ops, reserve_op, settle_adds
from .client import CONDITION_FAILED, error_code, store_call, unavailable
from .layout import deserialize, serialize
from .store_base import Cancelled, TableStore, backoff

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

REQUEST = "request"
USAGE, SPEND_DAY, SPEND_MONTH, RELEASE, SETTLE_TOKENS = "usage", "spend_day", "spend_month", "release", "settle"
FINISH = "finish"
RELEASED = "released"  # the termination reason of a request item whose admission was given back
V01_LEASE_PREFIX = "l_"  # 0.1 kept each stream's lease on the key's count item: `l_<request id>` = its expiry
_DROP_BATCH = 100  # 0.1 lease attributes removed per UpdateItem (an update expression holds at most 4 KB)


@dataclass(slots=True)
class AdmitResult:
    admitted: bool
    failures: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    contention: bool = False
    throttled: bool = False  # a partition refused it for throughput: it takes writes again within a second


class LimitsStore(TableStore):
    # --- admission -----------------------------------------------------------------------------------------
    def admit(self, plan: AdmissionPlan, request_item: dict[str, Any], attempt: int = 0) -> AdmitResult:
        """One TransactWriteItems: the limit parts that apply, and the Put of the in-flight request item."""
        parts = self.admission_parts(plan, request_item)
        names = [name for name, _ in parts]
        try:
            purpose = f"admit{attempt}" if plan.shard == 0 else f"admit{attempt}s{plan.shard}"  # one token per content
            self.transact([op for _, op in parts], self.token(plan.request_id, purpose))
        except Cancelled as cancelled:
            return AdmitResult(False, cancelled.failures(names), cancelled.contention, cancelled.throttled)
        return AdmitResult(True)

    def admission_parts(self, plan: AdmissionPlan, request_item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        request = {
            "TableName": self.table_name,
            "Item": serialize(request_item),
            # a request released after an admission of unknown outcome leaves a finished item: a late copy of
            # this admission then takes nothing
            "ConditionExpression": "attribute_not_exists(pk)",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        parts: list[tuple[str, dict[str, Any]]] = [(REQUEST, {"Put": request})]
        key = layout.partition(plan.key_id, plan.shard)
        limits = plan.limits
        if limits.rated:
            parts.append((RATE, self._rate_update(plan, key)))
            parts.append((PREV, self._prev_check(plan, key)))
        if limits.max_concurrent is not None:
            parts.append((CONCURRENCY, self._lease_update(plan, key)))
        for period in periods_of(limits, plan.spend_at, plan.shard, plan.shards):
            part = DAILY if period.limit == "daily_budget_usd" else MONTHLY
            parts.append((part, reserve_op(self.table_name, plan.key_id, period, plan.reserve_usd)))
        return parts

    def _rate_update(self, plan: AdmissionPlan, key: str) -> dict[str, Any]:
        window = plan.window
        conditions, values = _counter_conditions(plan.requests_threshold, plan.tokens_threshold)
        values.update({":one": 1, ":reserve": plan.reserve, ":ttl": layout.rate_ttl(window.minute)})
        return self._op(
            "Update",
            key,
            layout.rate_sk(window.minute, plan.shard),
            "ADD requests :one, tokens :reserve SET expires_at = :ttl",
            conditions,
            values,
        )

    def _prev_check(self, plan: AdmissionPlan, key: str) -> dict[str, Any]:
        limits = plan.limits
        conditions, values = _counter_conditions(
            None if limits.rpm is None else plan.prev_requests, None if limits.tpm is None else plan.prev_tokens
        )
        previous = layout.rate_sk(plan.window.minute - 1, plan.shard)
        return self._op("ConditionCheck", key, previous, None, conditions, values)

    def _lease_update(self, plan: AdmissionPlan, key: str) -> dict[str, Any]:
        """Take one slot of the key's bare count. The lease itself lives on the request item (ledger.py), so this
        item stays a few bytes however many streams are in flight: admission's write cost does not grow with them.
        Expired leases are given back by reconciling their requests, never by rewriting this count."""
        values: dict[str, Any] = {":one": 1, ":max": plan.limits.max_concurrent or 0}
        return self._op(
            "Update",
            key,
            layout.conc_sk(plan.shard),
            "ADD active :one",
            ["attribute_not_exists(active) OR active < :max"],
            values,
        )

    def release_unknown(self, plan: AdmissionPlan, expires_at: int) -> str:
        """Give back what an admission whose outcome is unknown (a timeout) may have taken, idempotently, by
        request id. First a finished tombstone of the request item, if there is none: a late copy of the
        admission then fails its condition and takes nothing ("blocked"). Else the admission applied: one
        transaction finishes the item and returns its slot, request and token reservation ("released"), unless
        it is finished already ("none")."""
        rid = plan.request_id
        tombstone = {
            **layout.request_key(rid),
            "key_id": plan.key_id,
            "finished_at": iso_ms(time.time()),
            "termination_reason": RELEASED,
            "expires_at": expires_at,
        }
        try:
            with store_call("PutItem"):
                self.client.put_item(
                    TableName=self.table_name, Item=serialize(tombstone), ConditionExpression="attribute_not_exists(pk)"
                )
            return "blocked"
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
        parts = self._release_parts(plan)
        try:
            self.transact([op for _, op in parts], self.token(rid, "release"))
        except Cancelled as cancelled:
            if FINISH in cancelled.failures([name for name, _ in parts]):
                return "none"
            raise unavailable("TransactWriteItems", f"release cancelled: {cancelled.codes}") from cancelled
        return "released"

    def _release_parts(self, plan: AdmissionPlan) -> list[tuple[str, dict[str, Any]]]:
        request = layout.request_key(plan.request_id)
        finish = "SET finished_at = :now, termination_reason = :reason REMOVE " + ", ".join(layout.LEDGER_ATTRS)
        values = {":now": iso_ms(plan.now_s), ":reason": RELEASED}  # deterministic: a retry is the same request
        unfinished = ["attribute_not_exists(finished_at)"]
        parts = [(FINISH, self._op("Update", request["pk"], request["sk"], finish, unfinished, values))]
        key = layout.partition(plan.key_id, plan.shard)
        if plan.limits.max_concurrent is not None:
            release = self._op("Update", key, layout.conc_sk(plan.shard), "ADD active :minus", [], {":minus": -1})
            parts.append((RELEASE, release))
        if plan.limits.rated:
            undo = {":minus": -1, ":unreserve": -plan.reserve}
            update = "ADD requests :minus, tokens :unreserve"
            rate = layout.rate_sk(plan.window.minute, plan.shard)
            parts.append((SETTLE_TOKENS, self._op("Update", key, rate, update, [], undo)))
        if plan.reserve_usd:
            releases = release_ops(self.table_name, plan.key_id, plan.spend_at, plan.reserve_usd, shard=plan.shard)
            parts += [(name, op) for name, op in zip((SPEND_DAY, SPEND_MONTH), releases, strict=True)]
        return parts

    # --- settlement ----------------------------------------------------------------------------------------
    def settle(
        self, settlement: Settlement, *, attempts: int = 6, purpose: str = "settle", deadline: float | None = None
    ) -> bool:
        """Write the usage record, add to the day's and month's spend, give the slot back, settle the token
        reservation and finish the request item: one transaction, conditional on the request not being finished
        yet, so a finalization and a reconciliation (or two reconcilers) never both count. Its client request
        token names the request and `purpose`: a retry of a transaction DynamoDB applied but whose answer was lost
        is applied once. True: this call settled it; False: it was settled already. Retried on contention and
        store errors until `attempts` or the monotonic `deadline`; then raises StoreUnavailable."""
        parts = self.settlement_parts(settlement, settlement.lease)
        names = [name for name, _ in parts]
        token = self.token(settlement.record.request_id, purpose)
        for attempt in range(attempts):
            try:
                self.transact([op for _, op in parts], token)
                return True
            except Cancelled as cancelled:
                failed = cancelled.failures(names)
                if FINISH in failed or USAGE in failed:
                    return False  # finished by an earlier attempt, the finalization, or another reconciler
                error: Exception = unavailable("TransactWriteItems", f"settlement cancelled: {cancelled.codes}")
            except StoreUnavailable as exc:
                error = exc
            pause = backoff(attempt)
            if attempt + 1 == attempts or (deadline is not None and time.monotonic() + pause >= deadline):
                raise error
            time.sleep(pause)
        raise AssertionError("unreachable")

    def settlement_parts(self, settlement: Settlement, lease: str | None) -> list[tuple[str, dict[str, Any]]]:
        record = settlement.record
        key = layout.partition(record.key_id, settlement.shard)
        usage = {
            "TableName": self.table_name,
            "Item": serialize(layout.usage_item(record, settlement.retention_days, settlement.shard)),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        parts: list[tuple[str, dict[str, Any]]] = [
            (USAGE, {"Put": usage}),
            (SPEND_DAY, self._spend_update(settlement, key, daily=True)),
            (SPEND_MONTH, self._spend_update(settlement, key, daily=False)),
            (FINISH, self._finish_update(record, settlement.lease_expired_before)),
        ]
        if lease is not None:  # the FINISH condition makes this happen once per request: no condition of its own
            release = self._op("Update", key, layout.conc_sk(settlement.shard), "ADD active :minus", [], {":minus": -1})
            parts.append((RELEASE, release))
        if settlement.tokens_delta and settlement.tokens_minute is not None:
            minute = settlement.tokens_minute
            settle = "ADD tokens :delta SET expires_at = if_not_exists(expires_at, :ttl)"
            values = {":delta": settlement.tokens_delta, ":ttl": layout.rate_ttl(minute)}
            rate = layout.rate_sk(minute, settlement.shard)
            parts.append((SETTLE_TOKENS, self._op("Update", key, rate, settle, [], values)))
        return parts

    def _finish_update(self, record: UsageRecord, lease_expired_before: int | None = None) -> dict[str, Any]:
        """The in-flight item is marked finished in the settlement's round trip (a late cancel then answers
        "finished"); it exists unless admission failed open, and then this creates it, with a TTL. Settled once:
        unless the item is only the tombstone of an admission whose outcome was unknown (`released`, everything
        it took given back), which a request admitted open afterwards still settles (its usage and spend)."""
        request = layout.request_key(record.request_id)
        values = {
            ":now": iso_ms(record.started_epoch + float(record.duration_ms or 0) / 1000),
            ":reason": record.termination_reason,
            ":kid": record.key_id,
            ":ttl": layout.finished_request_ttl(record),
            ":released": RELEASED,
        }
        update = (
            "SET finished_at = :now, termination_reason = :reason, key_id = if_not_exists(key_id, :kid),"
            " expires_at = if_not_exists(expires_at, :ttl) REMOVE " + ", ".join(layout.LEDGER_ATTRS)
        )
        finished = ["attribute_not_exists(finished_at) OR termination_reason = :released"]
        if lease_expired_before is not None:  # a relay that renewed its lease meanwhile is alive: not lost
            finished.append("lease_until < :expired_before")
            values[":expired_before"] = lease_expired_before
        return self._op("Update", request["pk"], request["sk"], update, finished, values)

    def _spend_update(self, settlement: Settlement, key: str, *, daily: bool) -> dict[str, Any]:
        record, retention_days = settlement.record, settlement.retention_days
        periods = SpendPeriods.at(record.started_epoch)
        period = periods.day if daily else periods.month  # its shard's item: `item` below
        item = shard_period(period, settlement.shard)
        adds = ["requests :one", "prompt_tokens :prompt", "completion_tokens :completion"]
        values: dict[str, Any] = {
            ":one": 1,
            ":prompt": record.prompt_tokens,
            ":completion": record.completion_tokens,
            ":kid": record.key_id,
            ":period": period[2:],
            ":ttl": layout.spend_ttl(record, retention_days, daily=daily),
        }
        if record.cost_usd is None:
            adds.append("unpriced_requests :one")
        else:
            adds.append("cost_usd :cost")
            values[":cost"] = record.cost_usd
        if record.usage_source == "estimated":
            adds.append("estimated_requests :one")
        budget_adds, budget_values = settle_adds(record.cost_usd, settlement.reserved_usd, settlement.shard)
        adds += budget_adds
        values.update(budget_values)
        sets = ["key_id = :kid", "period = :period", "expires_at = :ttl"]
        # A spend item is not indexed: the gsi1 keys an item written before still carries are removed here, so its
        # later writes no longer touch the one index partition every key's spend shared (layout.py, note 4).
        update = "ADD " + ", ".join(adds) + " SET " + ", ".join(sets) + (" REMOVE gsi1pk, gsi1sk" if daily else "")
        return self._op("Update", key, layout.spend_sk(item), update, [], values)

    def recent_requests(self, key_id: str, shards: int, epoch_s: float, minutes: int = 5) -> dict[int, int]:
        """The requests the key admitted in each of its last `minutes` complete minutes before `epoch_s`, all its
        first `shards` shards together, from its rate counters (they expire five minutes after their minute): one
        Query per shard."""
        now = Window.at(epoch_s).minute
        counts = dict.fromkeys(range(now - minutes, now), 0)
        for shard in range(max(1, shards)):
            bounds = {
                ":pk": layout.partition(key_id, shard),
                ":lo": layout.rate_sk(now - minutes),
                ":hi": layout.rate_sk(now - 1) + "~",  # `RATE#<minute>#<shard>` sorts before it
            }
            with store_call("Query"):
                out = self.client.query(
                    TableName=self.table_name,
                    KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
                    ExpressionAttributeValues=serialize(bounds),
                    ConsistentRead=True,
                )
            for raw in out.get("Items", []):
                item = deserialize(raw)
                minute = int(str(item["sk"]).split("#")[1])
                if minute in counts:
                    counts[minute] += int(item.get("requests", 0))
        return counts

    def read_counters(self, key_id: str, epoch_s: float, shard: int = 0) -> dict[str, Any]:
        """The key's (or one shard's) counter items as of `epoch_s` (consistent reads): `rate` (this minute's requests
        and tokens), `prev` (the minute before) and `concurrency` (the slots in use); {} for an item that does not
        exist. For tests and the benchmarks."""
        minute = Window.at(epoch_s).minute
        out: dict[str, Any] = {}
        parts = (
            ("rate", layout.rate_sk(minute, shard)),
            ("prev", layout.rate_sk(minute - 1, shard)),
            ("concurrency", layout.conc_sk(shard)),
        )
        for name, sk in parts:
            out[name] = self._get(key_id, sk, shard) or {}
        return out

    # --- migration of a 0.1 table (`llm-relay migrate`) -----------------------------------------------------
    def concurrency_key_ids(self) -> list[str]:
        """The key id of every concurrency count item: one paginated Scan (a one-off: it reads the whole table)."""
        found: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "sk = :conc",
            "ProjectionExpression": "pk",
            "ExpressionAttributeValues": serialize({":conc": layout.CONC_SK}),
        }
        while True:
            with store_call("Scan"):
                page = self.client.scan(**kwargs)
            found += [str(deserialize(raw)["pk"]).removeprefix("KEY#") for raw in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def concurrency_item(self, key_id: str) -> dict[str, Any] | None:
        """A key's concurrency count item as it is (consistent read), 0.1's lease attributes included."""
        return self._get(key_id, layout.CONC_SK)

    def recount(self, key_id: str, active: int, seen: int | None, drop: list[str]) -> bool:
        """Set a key's count to `active` and remove 0.1's lease attributes `drop`, if the count is still `seen` (None:
        absent): an admission or settlement meanwhile refuses it (False), to be counted again. Several writes for
        many attributes (an update expression holds at most 4 KB), each with the same condition."""
        batches = [drop[start : start + _DROP_BATCH] for start in range(0, len(drop), _DROP_BATCH)] or [[]]
        for batch in batches:
            names = {f"#l{i}": name for i, name in enumerate(batch)}
            update = "SET active = :n" + (" REMOVE " + ", ".join(names) if names else "")
            values: dict[str, Any] = {":n": active}
            if seen is None:
                condition = "attribute_not_exists(active)"
            else:
                condition, values[":seen"] = "active = :seen", seen
            key = serialize({"pk": layout.partition(key_id), "sk": layout.CONC_SK})
            try:
                with store_call("UpdateItem"):
                    self.client.update_item(
                        TableName=self.table_name,
                        Key=key,
                        UpdateExpression=update,
                        ConditionExpression=condition,
                        ExpressionAttributeValues=serialize(values),
                        **({"ExpressionAttributeNames": names} if names else {}),  # type: ignore[arg-type]
                    )
            except ClientError as exc:
                if error_code(exc) == CONDITION_FAILED:
                    return False
                raise
            seen = active
        return True

    # --- plumbing ------------------------------------------------------------------------------------------
    def _op(
        self,
        kind: str,
        pk: str,
        sk: str,
        update: str | None,
        conditions: list[str],
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        op: dict[str, Any] = {"TableName": self.table_name, "Key": serialize({"pk": pk, "sk": sk})}
        if update is not None:
            op["UpdateExpression"] = update
        if conditions:
            op["ConditionExpression"] = " AND ".join(f"({c})" for c in conditions)
            op["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        if values:
            op["ExpressionAttributeValues"] = serialize(values)
        if names:
            op["ExpressionAttributeNames"] = names
        return {kind: op}

    def _get(self, key_id: str, sk: str, shard: int = 0) -> dict[str, Any] | None:
        with store_call("GetItem"):
            out = self.client.get_item(
                TableName=self.table_name,
                ConsistentRead=True,
                Key=serialize({"pk": layout.partition(key_id, shard), "sk": sk}),
            )
        raw = out.get("Item")
        return deserialize(raw) if raw else None


def _counter_conditions(requests: int | None, tokens: int | None) -> tuple[list[str], dict[str, Any]]:
    conditions: list[str] = []
    values: dict[str, Any] = {}
    if requests is not None:
        conditions.append("attribute_not_exists(requests) OR requests <= :rmax")
        values[":rmax"] = requests
    if tokens is not None:
        conditions.append("attribute_not_exists(tokens) OR tokens <= :tmax")
        values[":tmax"] = tokens
    return conditions, values
