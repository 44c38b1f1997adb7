"""The ledger's pure parts (docs/design.md, "The ledger loses nothing"): what the request item holds so that a request
whose relay died can still be settled, and the one settlement builder finalization and the reconciler share.

A request item carries, from admission until it is finished: its lease (`lease_until`, epoch s, renewed every
third of `RELAY_LEASE_S` by `leases.LeaseKeeper`), the attributes of the two sparse indexes (`open_shard`,
`lease_key`), what admission took (`slot`, `rate_minute`, `reserve`, `settle_tokens`: the `Ticket`), and the
last checkpoint of its progress (`cp_*`). Settlement removes the index attributes, so the indexes only ever hold
unfinished requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from . import dynamo
from .admission import Ticket
from .attribution import from_item as attribution_from_item
from .dynamo import layout
from .limits import Window
from .metering import StreamMeter, Usage
from .pricing import Pricer
from .termination import TerminationReason
from .usage import UsageRecord


def admitted_item(
    item: dict[str, Any],
    *,
    lease_until: int,
    started_epoch: float,
    mode: str,
    prompt_tokens: int,
    ticket: Ticket,
) -> dict[str, Any]:
    """The request item admission writes: `item` plus the lease, what admission takes, and a first checkpoint
    (the prompt estimate, nothing generated yet)."""
    request_id = layout.request_id_of(str(item["pk"]))
    ledger: dict[str, Any] = {
        "open_shard": layout.open_shard(request_id),
        "lease_key": str(item["key_id"]),
        "lease_until": lease_until,
        "started_epoch": Decimal(str(round(started_epoch, 3))),
        "mode": mode,
        "slot": ticket.lease is not None,
        "reserve": ticket.reserve,
        "settle_tokens": ticket.settle_tokens,
        "cp_prompt": prompt_tokens,
        "cp_completion": 0,
        "cp_source": "estimated",
    }
    if ticket.minute is not None:
        ledger["rate_minute"] = ticket.minute
    return {**item, **ledger}


def checkpoint(
    meter: StreamMeter, messages: list[dict[str, Any]], now_epoch: float, upstream: str = "", billed_as: str = ""
) -> dict[str, Any]:
    """A stream's progress as `cp_*` attributes: tokens so far (the upstream's count if it arrived), TTFT, and the
    upstream streaming it and the model its answer is priced as (so a `lost` record names and prices it)."""
    usage = meter.usage(messages)
    point: dict[str, Any] = {
        "cp_prompt": usage.prompt_tokens,
        "cp_completion": usage.completion_tokens,
        "cp_source": "estimated" if usage.estimated else "upstream",
        "cp_at": Decimal(str(round(now_epoch, 3))),
    }
    if meter.ttft_s is not None:
        point["cp_ttft_ms"] = Decimal(str(round(meter.ttft_s * 1000, 3)))
    if upstream:
        point["cp_upstream"] = upstream
    if billed_as:
        point["cp_billed_as"] = billed_as
    return point


def ticket_of(item: Mapping[str, Any]) -> Ticket:
    """What admission took, as recorded on the request item."""
    minute = item.get("rate_minute")
    return Ticket(
        minute=None if minute is None else int(minute),
        reserve=int(item.get("reserve", 0)),
        lease=layout.request_id_of(str(item["pk"])) if item.get("slot") else None,
        settle_tokens=bool(item.get("settle_tokens", False)),
    )


def lost_record(item: Mapping[str, Any], pricer: Pricer) -> UsageRecord:
    """The usage record of a request whose relay stopped without finalizing: its last checkpoint, priced,
    termination reason `lost`, usage `estimated` (at most one renewal interval of generation is missing)."""
    started = float(item.get("started_epoch", 0))
    usage = Usage(int(item.get("cp_prompt", 0)), int(item.get("cp_completion", 0)), estimated=True)
    last = item.get("cp_at")
    ttft = item.get("cp_ttft_ms")
    return UsageRecord(
        key_id=str(item["key_id"]),
        request_id=layout.request_id_of(str(item["pk"])),
        model=str(item.get("model", "")),
        started_epoch=started,
        termination_reason=TerminationReason.LOST.value,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        usage_source="estimated",
        # priced as the model that was answering (its checkpoint), else the first route's, else the client's
        cost_usd=pricer(str(item.get("cp_billed_as") or item.get("billed_as") or item.get("model", "")), usage),
        ttft_ms=None if ttft is None else Decimal(ttft),
        duration_ms=None if last is None else Decimal(str(round((float(last) - started) * 1000, 3))),
        mode=str(item.get("mode", "")),
        upstream=item.get("cp_upstream"),
        attribution=attribution_from_item(item),  # admission wrote the request's user and tags on the item
        api=str(item.get("api", "chat")),
    )


def settlement_of(
    record: UsageRecord, ticket: Ticket | None, retention_days: int, now_s: float, reserved_usd: Decimal = Decimal(0)
) -> dynamo.Settlement:
    """The one settlement builder (finalization and the reconciler): the record, and what the ticket says to
    give back. The slot is released; the difference between reserved and used tokens is booked to the minute
    the request was admitted in, or (a refund is dropped then) to the current minute once that one is over; the
    budget reservation (`reserved_usd`, admission's plus every extension's) is swapped for the record's cost."""
    if ticket is None:
        return dynamo.Settlement(record, retention_days, reserved_usd=reserved_usd)
    delta, minute = 0, None
    if ticket.settle_tokens and ticket.minute is not None:
        delta = record.prompt_tokens + record.completion_tokens - ticket.reserve
        minute = Window.at(now_s).minute
        if minute != ticket.minute:
            delta = max(0, delta)
        else:
            minute = ticket.minute
    return dynamo.Settlement(record, retention_days, ticket.lease, delta, minute, reserved_usd)


def renewal_interval(lease_s: float) -> float:
    """Leases are renewed every third of their length: two renewals can fail before one expires."""
    return lease_s / 3


def lease_until(now_s: float, lease_s: float) -> int:
    return math.ceil(now_s + lease_s)


def stream_end_by(held_until: float, lease_s: float) -> float:
    """When a stream whose lease is surely held until `held_until` (epoch s) must end itself: half a renewal interval
    before it, so that a loaded machine's delays, the terminal frame and the end of relaying all fit before the lease
    can expire and a reconciler settle the request (as `lost`) under a stream that still runs."""
    return held_until - renewal_interval(lease_s) / 2
