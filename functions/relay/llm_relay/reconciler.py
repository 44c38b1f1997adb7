"""The reconciler (docs/design.md, "The ledger loses nothing"): settles requests whose relay stopped without finalizing
(killed, out of memory, a timeout past the deadline margin). It finds unfinished requests whose lease ran out on the
sparse `open` index (one Query per shard, no table scan), confirms each with a consistent read, and settles it as `lost`
from its last checkpoint through the same settlement as finalization: usage record, spend, token counters, the slot, the
item finished. The settlement is conditional on "not finished" and carries a client request token, so two reconcilers,
or a reconciler and a late finalization, settle a request exactly once.

Runs as `llm-relay reconcile`, on a schedule (reconcile_handler.py), and from admission for one key's expired
leases when they are what refuses a request (`limits.admit`, given this reconciler by the app). Each of the three
counts what it settled through the same `on_lost` (`telemetry.Telemetry.settled_lost`), so a `lost` request is
counted alike whoever settled it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from .dynamo import Stores, layout
from .ledger import lost_record, settlement_of
from .pricing import Pricer
from .usage import UsageRecord

logger = logging.getLogger(__name__)

PAGE = 100

OnLost = Callable[[Sequence[UsageRecord]], None]  # told of every request this reconciler settled as `lost`


@dataclass(frozen=True, slots=True)
class Reconciliation:
    settled: list[UsageRecord]  # settled as `lost` by this run
    skipped: int  # found expired, but finished or renewed meanwhile (another party settled it)


class Reconciler:
    def __init__(
        self,
        stores: Stores,
        pricer: Pricer,
        retention_days: int,
        *,
        clock: Callable[[], float] = time.time,
        on_lost: OnLost | None = None,
    ) -> None:
        self._stores = stores
        self._pricer = pricer
        self._retention_days = retention_days
        self._clock = clock
        self._on_lost = on_lost

    def run(self, max_requests: int = 10_000) -> Reconciliation:
        """Settle every request whose lease expired before now, up to `max_requests`; `on_lost` is told once."""
        now = self._clock()
        settled: list[UsageRecord] = []
        skipped = 0
        try:
            for shard in layout.open_shards():
                seen: set[str] = set()
                while len(settled) + skipped < max_requests:
                    fresh = [rid for rid in self._stores.requests.expired(shard, now, PAGE) if rid not in seen]
                    if not fresh:
                        break
                    seen.update(fresh)
                    for record in self._settle_each(fresh, now):
                        if record is None:
                            skipped += 1
                        else:
                            settled.append(record)
        finally:  # what was settled before a failure is counted too
            self._report(settled)
        return Reconciliation(settled, skipped)

    def settle(self, request_ids: Iterable[str], now: float | None = None) -> list[UsageRecord | None]:
        """Settle these requests as `lost` if they are still unfinished with an expired lease (None for each one
        that is not, or that another party settled first)."""
        done = self._settle_each(request_ids, self._clock() if now is None else now)
        self._report([record for record in done if record is not None])
        return done

    def _settle_each(self, request_ids: Iterable[str], now: float) -> list[UsageRecord | None]:
        return [self._settle_one(rid, now) for rid in request_ids]

    def _report(self, settled: list[UsageRecord]) -> None:
        if not settled or self._on_lost is None:
            return
        try:
            self._on_lost(settled)
        except Exception:  # counting them must never undo or hide what was settled
            logger.exception("reporting %d requests settled as lost failed", len(settled))

    def _settle_one(self, request_id: str, now: float) -> UsageRecord | None:
        item = self._stores.requests.get(request_id)
        if item is None or "finished_at" in item or int(item.get("lease_until", now + 1)) >= now:
            return None  # settled, or renewed since the index was read (indexes are eventually consistent)
        record = lost_record(layout.unfinished_of(item), self._pricer)
        reserved = Decimal(str(item.get("reserved_usd", 0)))  # the budget reservation it still holds
        settlement = replace(
            settlement_of(record, layout.ticket_of(item), self._retention_days, now, reserved),
            lease_expired_before=math.ceil(now),  # lease_until (whole seconds) < now
        )
        # Its own token purpose, each time: two reconcilers build the same transaction for a request, and with one
        # token DynamoDB would answer the second "success" without applying it (both would report it settled).
        # Made per call, not per instance: SnapStart restores every copy of an instance with the same fields.
        if not self._stores.limits.settle(settlement, purpose=f"reconcile:{uuid.uuid4().hex}"):
            return None
        logger.warning("request %s of key %s settled as lost (its relay stopped)", request_id, record.key_id)
        return record
