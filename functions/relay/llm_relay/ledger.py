"""The ledger's pure parts (docs/design.md, "The ledger loses nothing"): what a request's progress is at a checkpoint,
what the ledger knows of a request whose relay died, and the one settlement builder that finalization and the
reconciler share. No I/O: the request item's attributes are declared in `dynamo/layout.py`, which turns these values
into attributes and back.

A request item carries, from admission until it is finished: its lease (renewed every third of `RELAY_LEASE_S` by
`leases.LeaseKeeper`), the attributes of the two sparse indexes, what admission took (the `Ticket`), and the last
`Checkpoint` of its progress. Settlement removes the index attributes, so the indexes only ever hold unfinished
requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from .attribution import NO_ATTRIBUTION, Attribution
from .durations import millis_decimal
from .limits.rules import Window
from .metering import StreamMeter, Usage
from .outcome import Ticket
from .pricing import Pricer
from .termination import TerminationReason
from .usage import UsageRecord


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A stream's progress: tokens so far (the upstream's count if it arrived, else estimated), when, its TTFT, the
    upstream streaming it and the model its answer is priced as (so a `lost` record names and prices it)."""

    prompt_tokens: int
    completion_tokens: int = 0
    estimated: bool = True
    at_epoch: Decimal | None = None
    ttft_ms: Decimal | None = None
    upstream: str = ""
    billed_as: str = ""


def checkpoint(
    meter: StreamMeter, prompt_estimate: int, now_epoch: float, upstream: str = "", billed_as: str = ""
) -> Checkpoint:
    usage = meter.usage(prompt_estimate)
    return Checkpoint(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.estimated,
        Decimal(str(round(now_epoch, 3))),
        millis_decimal(meter.ttft_s),
        upstream,
        billed_as,
    )


@dataclass(frozen=True, slots=True)
class Unfinished:
    """What the ledger holds of a request that was admitted and not settled: enough to settle it as `lost`."""

    request_id: str
    key_id: str
    model: str
    started_epoch: float
    mode: str
    checkpoint: Checkpoint
    billed_as: str = ""  # the first route's model, when it is not the client's
    api: str = "chat"
    attribution: Attribution = NO_ATTRIBUTION


def lost_record(held: Unfinished, pricer: Pricer) -> UsageRecord:
    """The usage record of a request whose relay stopped without finalizing: its last checkpoint, priced,
    termination reason `lost`, usage `estimated` (at most one renewal interval of generation is missing)."""
    point = held.checkpoint
    usage = Usage(point.prompt_tokens, point.completion_tokens, estimated=True)
    return UsageRecord(
        key_id=held.key_id,
        request_id=held.request_id,
        model=held.model,
        started_epoch=held.started_epoch,
        termination_reason=TerminationReason.LOST.value,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        usage_source="estimated",
        # priced as the model that was answering (its checkpoint), else the first route's, else the client's
        cost_usd=pricer(point.billed_as or held.billed_as or held.model, usage),
        ttft_ms=point.ttft_ms,
        duration_ms=None if point.at_epoch is None else millis_decimal(float(point.at_epoch) - held.started_epoch),
        mode=held.mode,
        upstream=point.upstream or None,
        attribution=held.attribution,  # admission wrote the request's user and tags on the item
        api=held.api,
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    """What finalization writes: the usage record, spend, and (when admission took them) the lease release
    and the token settlement of the reservation."""

    record: UsageRecord
    retention_days: int
    lease: str | None = None
    tokens_delta: int = 0
    tokens_minute: int | None = None
    reserved_usd: Decimal = Decimal(0)  # the budget reservation to swap for the record's cost
    lease_expired_before: int | None = None  # the reconciler's: settle only if the lease is still expired then
    shard: int = 0  # the key's shard whose slot and token counters admission took from


def settlement_of(
    record: UsageRecord, ticket: Ticket | None, retention_days: int, now_s: float, reserved_usd: Decimal = Decimal(0)
) -> Settlement:
    """The one settlement builder (finalization and the reconciler): the record, and what the ticket says to
    give back. The slot is released; the difference between reserved and used tokens is booked to the minute
    the request was admitted in, or (a refund is dropped then) to the current minute once that one is over; the
    budget reservation (`reserved_usd`, admission's plus every extension's) is swapped for the record's cost."""
    if ticket is None:
        return Settlement(record, retention_days, reserved_usd=reserved_usd)
    delta, minute = 0, None
    if ticket.settle_tokens and ticket.minute is not None:
        delta = record.prompt_tokens + record.completion_tokens - ticket.reserve
        minute = Window.at(now_s).minute
        if minute != ticket.minute:
            delta = max(0, delta)
        else:
            minute = ticket.minute
    return Settlement(record, retention_days, ticket.lease, delta, minute, reserved_usd, shard=ticket.shard)


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
