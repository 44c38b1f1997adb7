"""DynamoDB adapter for limits and usage writes: the admission write (one TransactWriteItems) and the
settlement after the stream (one TransactWriteItems), plus the record of a refused request.

Items (single table, see store.py), all under the key's partition `KEY#<key_id>`:
    RATE#<epoch minute>   requests, tokens (sliding-window counters; TTL a few minutes)
    CONC                  active (count), l_<request_id> = lease expiry (epoch s), one attribute a stream
    SPEND#D#<yyyy-mm-dd>  cost_usd, requests, prompt/completion tokens (gsi1pk SPEND#D#<day>, gsi1sk key id)
    SPEND#M#<yyyy-mm>     the same per month
    USAGE#<ts>#<req id>   one usage record a request (usage.py)

Conditions are built from named parts, each with `ReturnValuesOnConditionCheckFailure=ALL_OLD`, so a refusal
names the parts that refused and carries their items: no second read. `ClientError` becomes
`StoreUnavailable` here; a transaction cancelled by conflicting writes (`TransactionConflict`, throttling)
is reported as contention for the caller to retry.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .limits import CONCURRENCY, DAILY, MONTHLY, PREV, RATE, AdmissionPlan, Window, day_of, lease_attr, month_of
from .store import StoreUnavailable, deserialize, make_client, serialize
from .usage import SECONDS_PER_DAY, UsageRecord, iso_ms

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

REQUEST = "request"
USAGE, SPEND_DAY, SPEND_MONTH, RELEASE, SETTLE_TOKENS = "usage", "spend_day", "spend_month", "release", "settle"
FINISH = "finish"
_CONTENTION = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
RATE_TTL_S = 300


@dataclass(slots=True)
class AdmitResult:
    admitted: bool
    failures: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    contention: bool = False


@dataclass(frozen=True, slots=True)
class Settlement:
    """What finalization writes: the usage record, spend, and (when admission took them) the lease release
    and the token settlement of the reservation."""

    record: UsageRecord
    retention_days: int
    lease: str | None = None
    tokens_delta: int = 0
    tokens_minute: int | None = None


class LimitsStore:
    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self.client = client or make_client(None, "us-east-1")

    # --- admission -----------------------------------------------------------------------------------------
    def admit(self, plan: AdmissionPlan, request_item: dict[str, Any], attempt: int = 0) -> AdmitResult:
        """One TransactWriteItems: the limit parts that apply, and the Put of the in-flight request item."""
        parts = self.admission_parts(plan, request_item)
        names = [name for name, _ in parts]
        try:
            self._transact([op for _, op in parts], _token(plan.request_id, f"admit{attempt}"))
        except _Cancelled as cancelled:
            return AdmitResult(False, cancelled.failures(names), cancelled.contention)
        return AdmitResult(True)

    def admission_parts(self, plan: AdmissionPlan, request_item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        parts: list[tuple[str, dict[str, Any]]] = [
            (REQUEST, {"Put": {"TableName": self.table_name, "Item": serialize(request_item)}})
        ]
        key = f"KEY#{plan.key_id}"
        limits = plan.limits
        if limits.rated:
            parts.append((RATE, self._rate_update(plan, key)))
            parts.append((PREV, self._prev_check(plan, key)))
        if limits.max_concurrent is not None:
            parts.append((CONCURRENCY, self._lease_update(plan, key)))
        for name, budget, sk in (
            (DAILY, limits.daily_budget_usd, f"SPEND#D#{day_of(plan.now_s)}"),
            (MONTHLY, limits.monthly_budget_usd, f"SPEND#M#{month_of(plan.now_s)}"),
        ):
            if budget is not None:
                parts.append(
                    (
                        name,
                        self._op(
                            "ConditionCheck",
                            key,
                            sk,
                            None,
                            ["attribute_not_exists(cost_usd) OR cost_usd < :budget"],
                            {":budget": budget},
                        ),
                    )
                )
        return parts

    def _rate_update(self, plan: AdmissionPlan, key: str) -> dict[str, Any]:
        window = plan.window
        conditions, values = _counter_conditions(plan.requests_threshold, plan.tokens_threshold)
        values.update({":one": 1, ":reserve": plan.reserve, ":ttl": (window.minute + 1) * 60 + RATE_TTL_S})
        return self._op(
            "Update",
            key,
            f"RATE#{window.minute}",
            "ADD requests :one, tokens :reserve SET expires_at = :ttl",
            conditions,
            values,
        )

    def _prev_check(self, plan: AdmissionPlan, key: str) -> dict[str, Any]:
        limits = plan.limits
        conditions, values = _counter_conditions(
            None if limits.rpm is None else plan.prev_requests, None if limits.tpm is None else plan.prev_tokens
        )
        return self._op("ConditionCheck", key, f"RATE#{plan.window.minute - 1}", None, conditions, values)

    def _lease_update(self, plan: AdmissionPlan, key: str) -> dict[str, Any]:
        names = {"#lease": lease_attr(plan.request_id)}
        values: dict[str, Any] = {":exp": plan.lease_expiry}
        maximum = plan.limits.max_concurrent or 0
        reclaim = dict(plan.reclaim or {})
        if not reclaim:
            values.update({":one": 1, ":max": maximum})
            return self._op(
                "Update",
                key,
                "CONC",
                "SET #lease = :exp ADD active :one",
                ["attribute_not_exists(active) OR active < :max"],
                values,
                names,
            )
        conditions = ["active < :max"]
        for i, (attr, expiry) in enumerate(sorted(reclaim.items())):
            names[f"#e{i}"] = attr
            values[f":e{i}"] = expiry
            conditions.append(f"#e{i} = :e{i}")
        values.update({":max": maximum + len(reclaim), ":delta": 1 - len(reclaim)})
        removed = ", ".join(f"#e{i}" for i in range(len(reclaim)))
        return self._op(
            "Update", key, "CONC", f"REMOVE {removed} SET #lease = :exp ADD active :delta", conditions, values, names
        )

    # --- settlement ----------------------------------------------------------------------------------------
    def settle(self, settlement: Settlement, *, attempts: int = 6) -> None:
        """Write the usage record, add to the day's and month's spend, release the lease and settle the
        token reservation: one transaction, idempotent (the record's Put refuses a second copy; a client
        request token covers botocore's own retries). Retried on contention and store errors; raises
        StoreUnavailable when every attempt failed."""
        lease = settlement.lease
        for attempt in range(attempts):
            parts = self.settlement_parts(settlement, lease)
            names = [name for name, _ in parts]
            try:
                self._transact(
                    [op for _, op in parts], _token(settlement.record.request_id, f"settle{int(lease is None)}")
                )
                return
            except _Cancelled as cancelled:
                failed = cancelled.failures(names)
                if USAGE in failed:
                    return  # recorded by an earlier attempt that looked failed
                if RELEASE in failed:
                    lease = None  # the lease expired and was taken over: nothing to release
                    continue
                error: Exception = StoreUnavailable(f"settlement cancelled: {cancelled.codes}")
            except StoreUnavailable as exc:
                error = exc
            if attempt + 1 == attempts:
                raise error
            time.sleep(_backoff(attempt))

    def settlement_parts(self, settlement: Settlement, lease: str | None) -> list[tuple[str, dict[str, Any]]]:
        record = settlement.record
        key = f"KEY#{record.key_id}"
        parts: list[tuple[str, dict[str, Any]]] = [
            (
                USAGE,
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": serialize(record.item(settlement.retention_days)),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ),
            (SPEND_DAY, self._spend_update(record, key, f"SPEND#D#{record.day}", settlement.retention_days, True)),
            (
                SPEND_MONTH,
                self._spend_update(record, key, f"SPEND#M#{record.day[:7]}", settlement.retention_days + 31, False),
            ),
            # The in-flight item is marked finished in the same round trip (a late cancel then answers
            # "finished"); it exists unless admission failed open, and then this creates it, with a TTL.
            (
                FINISH,
                self._op(
                    "Update",
                    f"REQ#{record.request_id}",
                    "REQ",
                    "SET finished_at = :now, termination_reason = :reason, key_id = if_not_exists(key_id, :kid),"
                    " expires_at = if_not_exists(expires_at, :ttl)",
                    [],
                    {
                        ":now": iso_ms(record.started_epoch + float(record.duration_ms or 0) / 1000),
                        ":reason": record.termination_reason,
                        ":kid": record.key_id,
                        ":ttl": int(record.started_epoch) + SECONDS_PER_DAY,
                    },
                ),
            ),
        ]
        if lease is not None:
            parts.append(
                (
                    RELEASE,
                    self._op(
                        "Update",
                        key,
                        "CONC",
                        "REMOVE #lease ADD active :minus",
                        ["attribute_exists(#lease)"],
                        {":minus": -1},
                        {"#lease": lease},
                    ),
                )
            )
        if settlement.tokens_delta and settlement.tokens_minute is not None:
            minute = settlement.tokens_minute
            parts.append(
                (
                    SETTLE_TOKENS,
                    self._op(
                        "Update",
                        key,
                        f"RATE#{minute}",
                        "ADD tokens :delta SET expires_at = if_not_exists(expires_at, :ttl)",
                        [],
                        {":delta": settlement.tokens_delta, ":ttl": (minute + 1) * 60 + RATE_TTL_S},
                    ),
                )
            )
        return parts

    def _spend_update(self, record: UsageRecord, key: str, sk: str, retention_days: int, daily: bool) -> dict[str, Any]:
        adds = ["requests :one", "prompt_tokens :prompt", "completion_tokens :completion"]
        values: dict[str, Any] = {
            ":one": 1,
            ":prompt": record.prompt_tokens,
            ":completion": record.completion_tokens,
            ":kid": record.key_id,
            ":period": sk.rsplit("#", 1)[1],
            ":ttl": int(record.started_epoch) + (retention_days + 1) * SECONDS_PER_DAY,
        }
        if record.cost_usd is None:
            adds.append("unpriced_requests :one")
        else:
            adds.append("cost_usd :cost")
            values[":cost"] = record.cost_usd
        if record.usage_source == "estimated":
            adds.append("estimated_requests :one")
        sets = ["key_id = :kid", "period = :period", "expires_at = :ttl"]
        if daily:
            sets += ["gsi1pk = :gpk", "gsi1sk = :kid"]
            values[":gpk"] = f"SPEND#D#{record.day}"
        return self._op("Update", key, sk, "ADD " + ", ".join(adds) + " SET " + ", ".join(sets), [], values)

    # --- refused requests ----------------------------------------------------------------------------------
    def put_usage(self, record: UsageRecord, retention_days: int) -> None:
        """The record of a refused request (nothing to settle)."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=serialize(record.item(retention_days)),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise StoreUnavailable(f"DynamoDB {exc.response['Error']['Code']}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    def put_request(self, request_item: dict[str, Any]) -> None:
        """The in-flight request item alone, for a key without limits."""
        try:
            self.client.put_item(TableName=self.table_name, Item=serialize(request_item))
        except ClientError as exc:
            raise StoreUnavailable(f"DynamoDB {exc.response['Error']['Code']}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    def read_counters(self, key_id: str, epoch_s: float) -> dict[str, Any]:
        """The key's current counters (consistent reads), for tests and the CLI: rate windows, leases."""
        minute = Window.at(epoch_s).minute
        out: dict[str, Any] = {}
        for name, sk in (("rate", f"RATE#{minute}"), ("prev", f"RATE#{minute - 1}"), ("concurrency", "CONC")):
            got = self._call_get(key_id, sk)
            out[name] = got or {}
        return out

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

    def _transact(self, items: list[dict[str, Any]], token: str) -> None:
        try:
            self.client.transact_write_items(TransactItems=items, ClientRequestToken=token)  # type: ignore[arg-type]
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "TransactionCanceledException":
                raise _Cancelled(exc.response.get("CancellationReasons", [])) from exc  # type: ignore[arg-type]
            raise StoreUnavailable(f"DynamoDB {code}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    def _call_get(self, key_id: str, sk: str) -> dict[str, Any] | None:
        try:
            out = self.client.get_item(
                TableName=self.table_name, ConsistentRead=True, Key=serialize({"pk": f"KEY#{key_id}", "sk": sk})
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        raw = out.get("Item")
        return deserialize(raw) if raw else None


class _Cancelled(Exception):
    """A cancelled transaction: its reasons, one per item in order."""

    def __init__(self, reasons: list[dict[str, Any]]) -> None:
        super().__init__("transaction cancelled")
        self.reasons = reasons
        self.codes = [str(reason.get("Code", "None")) for reason in reasons]
        self.contention = any(code in _CONTENTION for code in self.codes)

    def failures(self, names: list[str]) -> dict[str, dict[str, Any] | None]:
        """The parts whose condition failed, with their items as they were (None: the item did not exist).
        Any other cancellation reason (validation, ...) is a store error, not a refusal."""
        failed: dict[str, dict[str, Any] | None] = {}
        for name, reason in zip(names, self.reasons, strict=False):
            code = reason.get("Code", "None")
            if code == "ConditionalCheckFailed":
                item = reason.get("Item")
                failed[name] = deserialize(item) if item else None
            elif code not in ("None", *_CONTENTION):
                raise StoreUnavailable(f"transaction cancelled: {code} on {name}")
        return failed


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


def _token(request_id: str, purpose: str) -> str:
    """A client request token (at most 36 characters) naming one write of one request."""
    return hashlib.sha256(f"{request_id}:{purpose}".encode()).hexdigest()[:36]


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: up to 20 ms, 40 ms, 80 ms, ... capped at 1 s."""
    return random.uniform(0, min(1.0, 0.02 * 2**attempt))
