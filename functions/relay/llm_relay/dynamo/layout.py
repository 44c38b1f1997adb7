"""The relay's one DynamoDB table: every item's keys, attributes and TTL, and the mapping between items and
the relay's values (`ApiKey`, `UsageRecord`, the in-flight request). The stores build their expressions on
these; nothing else knows a `pk`.

One table (`template.yaml`, `RelayTable`): `pk` (S) / `sk` (S); TTL on `expires_at` (epoch s); global secondary
indexes `gsi1` (`gsi1pk` / `gsi1sk`, all attributes), and two sparse ones over unfinished requests only (their key
attributes exist on a request item from admission until it is finished): `open` (`open_shard` / `lease_until`, keys
only: the reconciler's expired leases across all keys) and `leases` (`lease_key` / `lease_until`, keys only: one
key's earliest lease, for a concurrency refusal's Retry-After).

    pk                sk                           attributes                                        TTL (expires_at)
    KEYHASH#<sha256>  KEY                          the key record: key_id, name, status, created_at, none
                                                   revoked_at, allowed_models, limits, key_expires_at
                                                   (read on every authentication, cached in-process)
    KEYID#<key_id>    META                         the same record by public id, plus key_hash       none
                                                   (CLI: get, list, revoke, set limits); after a
                                                   rotation previous_key_hash, previous_valid_until
                                                   (its KEYHASH# item expires then: key_expires_at,  (grace end
                                                   and the TTL a day later)                          + 1 day)
    REQ#<request_id>  REQ                          in-flight request: key_id, model, started_at;     request TTL (1)
                                                   reserved_usd (its budget reservation, in all);
                                                   cancel_requested_at (the cancel mark);
                                                   finished_at, termination_reason (settlement);
                                                   the ledger (ledger.py): lease_until, open_shard,
                                                   lease_key (while unfinished), started_epoch, mode,
                                                   slot, rate_minute, reserve, settle_tokens (what
                                                   admission took), cp_* (the last checkpoint)
                                                   client_request_id (X-Client-Request-Id, if sent)
                                                   user, tags (attribution.py, if sent)
    CCANCEL#<key_id>#<client id>  CANCEL           a cancel for a client-chosen id (pending: the         now + 5 min (3)
                                                   request may not exist yet): key_id,
                                                   client_request_id, cancel_requested_at
    KEY#<key_id>      RATE#<epoch minute>          requests, tokens (sliding-window counters)        minute end + 5 min
    KEY#<key_id>      RATE#<epoch minute>#<shard>  the same, of one shard of a key with `shards` (5)  minute end + 5 min
    KEY#<key_id>      CONC                         active (a bare count: the leases live on the      none
                                                   request items, so its size never grows)
    KEY#<key_id>      CONC#<shard>                 the same, of one shard (5)                        none
    KEY#<key_id>      SPEND#D#<yyyy-mm-dd>         cost_usd, requests, prompt_tokens,                retention + 1 day
                                                   reserved_usd (running requests' reservations),
                                                   committed_usd (cost + reserved: what budgets
                                                   check), completion_tokens, unpriced_requests,
                                                   estimated_requests, key_id, period (not
                                                   indexed: settlement removes the gsi1 keys an
                                                   item of 0.3 or before still has (4))
    KEY#<key_id>      SPEND#M#<yyyy-mm>            the same per month                                retention + 32 days
    KEY#<key_id>      USAGE#<iso ms>#<request_id>  one usage record a request (UsageRecord's         retention (2)
                                                   fields; cost_usd absent when unpriced,
                                                   attempts_maybe_billed when not 0, user and
                                                   tags when sent, validation when checked);
                                                   gsi1pk USAGE#<yyyy-mm-dd>#<n> (n: one of
                                                   USAGE_SHARDS, from the request id (4)),
                                                   gsi1sk <iso ms>#<request_id>

(1) RELAY_REQUEST_TTL_S after admission; one day after the start when settlement creates the item (admission
failed open and wrote none). (2) RELAY_USAGE_RETENTION_DAYS after the request started; the spend items count
from the same start. (3) PENDING_CANCEL_TTL_S: a cancel sent before the request reached the relay waits that long.
(4) No index partition is shared by every request: a partition takes 1,000 write units a second, so one written by
every request would cap the whole deployment there. A day's usage records are spread over `USAGE_SHARDS` gsi1
partitions (0.03 write units a request on each), the `open` index over `OPEN_SHARDS` (its entry is written at
admission, moved at each renewal and deleted at settlement: about 4 units a request, 0.03 on each shard), and the
spend items are not indexed at all (nothing read that index; it took 2 units a request on one partition). A table
written before keeps working: its records of a day are under `USAGE#<day>` (read beside the shards), its requests'
`open_shard` values are among today's shards, and a spend item's old index keys are removed by its next settlement.

(5) A key with `shards` N > 1 splits its rate and concurrency limits into N shares and its spend over N items per
period; shard n's items (its rate, count and spend items, and the usage records of the requests it admitted) live in
the partition `KEY#<key_id>#<n>` (shard 0's are the key's own, as without shards), so that no partition takes more
than its share of the key's writes. A request takes from the shard its id hashes to, and its item records the shard
(`shard`; its `lease_key` is `<key_id>#<shard>`), so settlement and the reconciler give back to that shard.

So a key is found by its hash in one GetItem; a key's limit state, spend and usage share its partition
(admission and settlement are one transaction each over it); a key's usage comes back in time order from one
Query, and every key's usage of a day from one Query per gsi1 shard.
"""

from __future__ import annotations

import calendar
import hashlib
import time
from dataclasses import replace
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from ..attribution import as_item as attribution_attributes
from ..attribution import from_item as attribution_from_item
from ..keys import ISO, ApiKey, now_iso
from ..ledger import Checkpoint, Unfinished
from ..outcome import Ticket
from ..sanitize.policy import KeyPolicy
from ..usage import SECONDS_PER_DAY, UsageRecord, iso_ms
from ..validation import Verdict

INDEX = "gsi1"
OPEN_INDEX = "open"  # sparse: unfinished requests by shard, lease expiry (the reconciler)
LEASE_INDEX = "leases"  # sparse: unfinished requests by key, lease expiry (earliest lease of a key)
OPEN_SHARDS = 128  # the open index's partitions: the reconciler queries each; a partition takes 1,000 WCU/s (4)
USAGE_SHARDS = 32  # gsi1 partitions of a day's usage records: `llm-relay usage` across keys queries each (4)
LEDGER_ATTRS = ("open_shard", "lease_key", "lease_until")  # removed at settlement: the item leaves both indexes
RATE_TTL_S = 300  # a minute's counters outlive it by 5 minutes: the next window still reads them
CONC_SK = "CONC"
META_SK = "META"  # the sort key of a key's by-id item, the one `keys list` scans for
_CLIENT_CANCEL = "CCANCEL#"
PENDING_CANCEL_TTL_S = 300  # how long a cancel for a client id not seen yet is kept

_ser = TypeSerializer()
_de = TypeDeserializer()


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    """Python values to DynamoDB attribute values (Decimal for numbers)."""
    return {k: _ser.serialize(v) for k, v in item.items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


# --- keys ------------------------------------------------------------------------------------------------------
def key_by_hash(key_hash: str) -> dict[str, str]:
    return {"pk": f"KEYHASH#{key_hash}", "sk": "KEY"}


def key_by_id(key_id: str) -> dict[str, str]:
    """Its own partition, not the key's `KEY#` one: the function's role may write `KEY#` items (limit state,
    spend, usage) but no key item (template.yaml, `dynamodb:LeadingKeys`)."""
    return {"pk": f"KEYID#{key_id}", "sk": META_SK}


def partition(key_id: str, shard: int = 0) -> str:
    """The partition of everything one key owns: its limit state, spend and usage; for a key with `shards`, the
    partition of one shard's (`KEY#<key_id>#<shard>`; shard 0's are the key's own), so that no partition takes more
    than its share of the key's writes."""
    return f"KEY#{key_id}" if shard == 0 else f"KEY#{key_id}#{shard}"


def partitions(key_id: str, shards: int) -> list[str]:
    """The partitions of a key's first `shards` shards (what a report reads: `MAX_SHARDS` finds every one)."""
    return [partition(key_id, shard) for shard in range(max(1, shards))]


def key_items(
    key: ApiKey, key_hash: str, *, previous: tuple[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The key's two items, by hash (authentication) and by id (the CLI). `previous`: the hash of the secret a
    rotation replaced and until when it works, remembered on the by-id item."""
    attributes = key_attributes(key)
    by_id = {**key_by_id(key.key_id), "key_hash": key_hash, **attributes}
    if previous is not None:
        by_id["previous_key_hash"], by_id["previous_valid_until"] = previous
    return {**key_by_hash(key_hash), **attributes}, by_id


def previous_secret(by_id: dict[str, Any]) -> tuple[str, str] | None:
    """(hash, valid until) of the secret a rotation replaced, from the by-id item."""
    if "previous_key_hash" not in by_id:
        return None
    return str(by_id["previous_key_hash"]), str(by_id["previous_valid_until"])


def previous_secret_item(key: ApiKey, key_hash: str, valid_until: str) -> dict[str, Any]:
    """The replaced secret's by-hash item: the key's record, expiring at the end of the grace period (or the
    key's own expiry if sooner), deleted by the TTL a day after."""
    until = min(valid_until, key.expires_at) if key.expires_at else valid_until
    item = {**key_by_hash(key_hash), **key_attributes(replace(key, expires_at=until))}
    item["expires_at"] = calendar.timegm(time.strptime(until, ISO)) + SECONDS_PER_DAY
    return item


def expired_iso(when: str) -> bool:
    return time.time() >= calendar.timegm(time.strptime(when, ISO))


def key_attributes(key: ApiKey) -> dict[str, Any]:
    item: dict[str, Any] = {"key_id": key.key_id, "name": key.name, "status": key.status, "created_at": key.created_at}
    if key.revoked_at:
        item["revoked_at"] = key.revoked_at
    if key.allowed_models is not None:
        item["allowed_models"] = sorted(key.allowed_models)
    if key.limits:
        item["limits"] = dict(key.limits)
    if key.expires_at:
        item["key_expires_at"] = key.expires_at  # not `expires_at`: that is the table's TTL attribute
    if key.sanitize is not None and not key.sanitize.empty:
        item["sanitize"] = key.sanitize.as_item()
    return item


def key_from_item(item: dict[str, Any]) -> ApiKey:
    models = item.get("allowed_models")
    return ApiKey(
        key_id=str(item["key_id"]),
        name=str(item.get("name", "")),
        status=str(item.get("status", "active")),
        created_at=str(item.get("created_at", "")),
        revoked_at=item.get("revoked_at"),
        allowed_models=frozenset(models) if models is not None else None,
        limits={k: Decimal(v) for k, v in (item.get("limits") or {}).items()},
        expires_at=item.get("key_expires_at"),
        sanitize=KeyPolicy.from_item(item.get("sanitize")),
    )


# --- in-flight requests ----------------------------------------------------------------------------------------
def request_key(request_id: str) -> dict[str, str]:
    return {"pk": f"REQ#{request_id}", "sk": "REQ"}


def request_id_of(pk: str) -> str:
    return pk.removeprefix("REQ#")


def request_item(
    request_id: str, key_id: str, model: str, ttl_s: int, client_request_id: str | None = None
) -> dict[str, Any]:
    """The in-flight request item, written by admission (alone, or inside the limits transaction). The ledger
    adds its lease and what admission took (`admitted_item`)."""
    item: dict[str, Any] = {
        **request_key(request_id),
        "key_id": key_id,
        "model": model,
        "started_at": now_iso(),
        "expires_at": int(time.time()) + ttl_s,
    }
    if client_request_id is not None:
        item["client_request_id"] = client_request_id
    return item


# --- the ledger's attributes on a request item (ledger.py holds the values, this their names) --------------------
def admitted_item(
    item: dict[str, Any],
    *,
    lease_until: int,
    started_epoch: float,
    mode: str,
    prompt_tokens: int,
    ticket: Ticket,
) -> dict[str, Any]:
    """The request item admission writes: `item` plus the lease, the sparse indexes' keys, what admission takes
    (the ticket) and a first checkpoint (the prompt estimate, nothing generated yet)."""
    request_id = request_id_of(str(item["pk"]))
    ledger: dict[str, Any] = {
        "open_shard": open_shard(request_id),
        "lease_key": lease_key(str(item["key_id"]), ticket.shard),
        "lease_until": lease_until,
        "started_epoch": Decimal(str(round(started_epoch, 3))),
        "mode": mode,
        "slot": ticket.lease is not None,
        "reserve": ticket.reserve,
        "settle_tokens": ticket.settle_tokens,
        **checkpoint_attributes(Checkpoint(prompt_tokens)),
    }
    if ticket.minute is not None:
        ledger["rate_minute"] = ticket.minute
    if ticket.shard:
        ledger["shard"] = ticket.shard  # the key's shard admission took from (absent: the key's own items)
    return {**item, **ledger}


def checkpoint_attributes(point: Checkpoint) -> dict[str, Any]:
    """A checkpoint as the request item's `cp_*` attributes (what a renewal writes)."""
    attributes: dict[str, Any] = {
        "cp_prompt": point.prompt_tokens,
        "cp_completion": point.completion_tokens,
        "cp_source": "estimated" if point.estimated else "upstream",
    }
    if point.at_epoch is not None:
        attributes["cp_at"] = point.at_epoch
    if point.ttft_ms is not None:
        attributes["cp_ttft_ms"] = point.ttft_ms
    if point.upstream:
        attributes["cp_upstream"] = point.upstream
    if point.billed_as:
        attributes["cp_billed_as"] = point.billed_as
    return attributes


def ticket_of(item: dict[str, Any]) -> Ticket:
    """What admission took, as recorded on the request item."""
    minute = item.get("rate_minute")
    return Ticket(
        minute=None if minute is None else int(minute),
        reserve=int(item.get("reserve", 0)),
        lease=request_id_of(str(item["pk"])) if item.get("slot") else None,
        settle_tokens=bool(item.get("settle_tokens", False)),
        shard=int(item.get("shard", 0)),
    )


def unfinished_of(item: dict[str, Any]) -> Unfinished:
    """What an unfinished request item holds: the request, and its last checkpoint."""
    at, ttft = item.get("cp_at"), item.get("cp_ttft_ms")
    point = Checkpoint(
        int(item.get("cp_prompt", 0)),
        int(item.get("cp_completion", 0)),
        item.get("cp_source", "estimated") != "upstream",
        None if at is None else Decimal(at),
        None if ttft is None else Decimal(ttft),
        str(item.get("cp_upstream") or ""),
        str(item.get("cp_billed_as") or ""),
    )
    return Unfinished(
        request_id=request_id_of(str(item["pk"])),
        key_id=str(item["key_id"]),
        model=str(item.get("model", "")),
        started_epoch=float(item.get("started_epoch", 0)),
        mode=str(item.get("mode", "")),
        checkpoint=point,
        billed_as=str(item.get("billed_as") or ""),
        api=str(item.get("api", "chat")),
        attribution=attribution_from_item(item),
    )


def client_cancel_key(key_id: str, client_request_id: str) -> dict[str, str]:
    """The cancel mark of a client-chosen id, scoped to the key (two keys may choose the same id)."""
    return {"pk": f"{_CLIENT_CANCEL}{key_id}#{client_request_id}", "sk": "CANCEL"}


def is_client_cancel(pk: str) -> bool:
    return pk.startswith(_CLIENT_CANCEL)


def marked_item_key(pk: str) -> dict[str, str]:
    """The key of an item that can carry a cancel mark (a request item, a client cancel item), from its pk."""
    return {"pk": pk, "sk": "CANCEL" if is_client_cancel(pk) else "REQ"}


def shard_of(request_id: str, shards: int) -> int:
    """A request's shard among `shards`: spread evenly, the same in every process."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % shards


def open_shard(request_id: str) -> str:
    """The open index partition of a request: spread over `OPEN_SHARDS` so no one index partition is hot. (A table
    written with fewer shards holds values among these: the same hash, a smaller modulus that divides this one.)"""
    return f"OPEN#{shard_of(request_id, OPEN_SHARDS)}"


def open_shards() -> list[str]:
    return [f"OPEN#{n}" for n in range(OPEN_SHARDS)]


def finished_request_ttl(record: UsageRecord) -> int:
    """The TTL settlement gives a request item it has to create (admission failed open and wrote none)."""
    return int(record.started_epoch) + SECONDS_PER_DAY


# --- limit state -----------------------------------------------------------------------------------------------
def rate_sk(minute: int, shard: int = 0) -> str:
    """A minute's rate counters of the key, or of one of its shards (`RATE#<minute>#<shard>`)."""
    return f"RATE#{minute}" if shard == 0 else f"RATE#{minute}#{shard}"


def conc_sk(shard: int = 0) -> str:
    """The concurrency count of the key, or of one of its shards (`CONC#<shard>`)."""
    return CONC_SK if shard == 0 else f"{CONC_SK}#{shard}"


def lease_key(key_id: str, shard: int = 0) -> str:
    """The `leases` index partition of the key's (or one shard's) unfinished requests."""
    return key_id if shard == 0 else f"{key_id}#{shard}"


def rate_ttl(minute: int) -> int:
    return (minute + 1) * 60 + RATE_TTL_S


def spend_sk(period: str) -> str:
    """`period` is `D#<yyyy-mm-dd>` or `M#<yyyy-mm>`."""
    return f"SPEND#{period}"


def spend_ttl(record: UsageRecord, retention_days: int, *, daily: bool) -> int:
    days = retention_days if daily else retention_days + 31
    return int(record.started_epoch) + (days + 1) * SECONDS_PER_DAY


# --- usage records ---------------------------------------------------------------------------------------------
def usage_sk(epoch_s: float, request_id: str = "") -> str:
    """A usage record's sort key; without a request id, the bound of a time range."""
    return f"USAGE#{iso_ms(epoch_s)}" + (f"#{request_id}" if request_id else "")


def usage_day(day: str, request_id: str) -> str:
    """The `gsi1pk` of a usage record: its UTC day, and its shard among `USAGE_SHARDS`."""
    return f"USAGE#{day}#{shard_of(request_id, USAGE_SHARDS)}"


def usage_day_partitions(day: str) -> list[str]:
    """Every `gsi1pk` holding usage records of one UTC day: the shards, and the one partition of a table written
    before the records were sharded."""
    return [f"USAGE#{day}", *(f"USAGE#{day}#{n}" for n in range(USAGE_SHARDS))]


def usage_item(record: UsageRecord, retention_days: int, shard: int = 0) -> dict[str, Any]:
    """A usage record's item, in the partition of the key's shard that admitted the request."""
    item: dict[str, Any] = {
        "pk": partition(record.key_id, shard),
        "sk": usage_sk(record.started_epoch, record.request_id),
        "gsi1pk": usage_day(record.day, record.request_id),
        "gsi1sk": f"{record.timestamp}#{record.request_id}",
        "key_id": record.key_id,
        "request_id": record.request_id,
        "model": record.model,
        "timestamp": record.timestamp,
        "termination_reason": record.termination_reason,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "usage_source": record.usage_source,
        "mode": record.mode,
        "expires_at": int(record.started_epoch) + retention_days * SECONDS_PER_DAY,
    }
    optional = {
        "cost_usd": record.cost_usd,
        "ttft_ms": record.ttft_ms,
        "duration_ms": record.duration_ms,
        "cancel_source": record.cancel_source,
        "upstream": record.upstream,
        "attempts_maybe_billed": record.attempts_maybe_billed or None,
        "guardrail_action": record.guardrail_action,
        "policy_version": record.policy_version,
        "validation": None if record.validation is None else record.validation.as_json(),
        "redactions": dict(record.redactions) or None,
        "prompt_redactions": dict(record.prompt_redactions) or None,
        "api": None if record.api == "chat" else record.api,
        "repeated_events": record.repeated_events or None,  # absent: a chat completion (as every record of 0.2 is)
    }
    item.update({name: value for name, value in optional.items() if value is not None})
    item.update(attribution_attributes(record.attribution))  # `user`, `tags` (a map), each only when present
    return item


def is_usage_item(item: dict[str, Any]) -> bool:
    return "request_id" in item and "timestamp" in item


def usage_record(item: dict[str, Any]) -> UsageRecord:
    ts = str(item["timestamp"])
    epoch = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000
    cost = item.get("cost_usd")
    return UsageRecord(
        key_id=str(item["key_id"]),
        request_id=str(item["request_id"]),
        model=str(item.get("model", "")),
        started_epoch=epoch,
        termination_reason=str(item.get("termination_reason", "")),
        prompt_tokens=int(item.get("prompt_tokens", 0)),
        completion_tokens=int(item.get("completion_tokens", 0)),
        cached_tokens=int(item.get("cached_tokens", 0)),
        usage_source=str(item.get("usage_source", "")),
        cost_usd=Decimal(cost) if cost is not None else None,
        ttft_ms=item.get("ttft_ms"),
        duration_ms=item.get("duration_ms"),
        mode=str(item.get("mode", "")),
        cancel_source=item.get("cancel_source"),
        upstream=item.get("upstream"),
        attempts_maybe_billed=int(item.get("attempts_maybe_billed", 0)),
        redactions={str(k): int(v) for k, v in (item.get("redactions") or {}).items()},
        prompt_redactions={str(k): int(v) for k, v in (item.get("prompt_redactions") or {}).items()},
        guardrail_action=item.get("guardrail_action"),
        policy_version=int(item["policy_version"]) if "policy_version" in item else None,
        validation=Verdict.from_item(item.get("validation")),
        attribution=attribution_from_item(item),
        api=str(item.get("api", "chat")),  # records written before the other APIs were all chat completions
        repeated_events=int(item.get("repeated_events", 0)),
    )
