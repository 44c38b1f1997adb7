"""Settlement (docs/design.md, "The ledger loses nothing"): one TransactWriteItems before the response body closes:
the usage record, the day's and month's spend, the lease release and the token settlement (`ledger.settlement_of`,
shared with the reconciler), conditional on the request not being finished.

Bounded by `RELAY_FINALIZE_TIMEOUT_S`; if it fails, the record is logged in full as one structured line (Powertools
Logger, no secrets), and the same transaction (same client request token: applied once) is retried from a background
thread after the response, until it is written or the reconciler settled the request as `lost` from its last
checkpoint; the stream is never broken by it. A settlement refused because another party settled the request first
(a reconciler, while this process was paused) logs its full record beside what the ledger holds, and the request's
telemetry says what the ledger holds (`telemetry.LedgerNote`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from ..dynamo import Stores, layout
from ..errors import StoreUnavailable
from ..ledger import Settlement, lost_record, settlement_of
from ..outcome import RequestContext, StreamOutcome
from ..pricing import Pricer
from ..settings import Settings
from ..telemetry import LedgerNote
from ..termination import TerminationReason
from ..usage import UsageRecord, record_for
from .reporting import LimitsMetrics, bounded, record_not_written, write_later
from .rules import counter_id
from .seen import SeenCounters

logger = logging.getLogger(__name__)


class LedgerWitness(Protocol):
    """Who hears what finalization could not settle itself (`telemetry.Telemetry`)."""

    def note(self, request_id: str, note: LedgerNote) -> None: ...

    def counted_late(self, ctx: RequestContext, outcome: StreamOutcome, record: UsageRecord) -> None: ...


class Settler:
    def __init__(
        self,
        stores: Stores,
        settings: Settings,
        *,
        seen: SeenCounters,
        pricer: Pricer,
        metrics: LimitsMetrics,
        log: Logger,
        witness: LedgerWitness | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stores = stores
        self._settings = settings
        self._seen = seen
        self._pricer = pricer
        self._metrics = metrics
        self._log = log
        self._witness = witness
        self._clock = clock

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        """Settle the request, within `RELAY_FINALIZE_TIMEOUT_S`; past it the record is logged and the settlement
        retried after the response (`_settle_later`), racing the reconciler (it settles the request as `lost` once
        the lease, no longer renewed, expires): the ledger takes exactly one of the two."""
        record = record_for(ctx, outcome)
        until = time.monotonic() + self._settings.finalize_timeout_s
        settlement: Settlement | None = None
        try:
            reserved = await self._reserved(ctx, until)
            settlement = settlement_of(record, ctx.ticket, self._settings.usage_retention_days, self._clock(), reserved)
            settle = functools.partial(self._stores.limits.settle, settlement, deadline=until)
            settled = await bounded(settle, until=until)
        except StoreUnavailable as exc:
            record_not_written(self._log, self._metrics, record.as_json(), exc)
            self._note(ctx.request_id, LedgerNote("pending"))
            if settlement is not None:
                self._settle_later(ctx, outcome, settlement)
            return
        if not settled:
            held = await self._ledger_holds(ctx.request_id, until)
            self._refused_late(record, held)
            self._note(ctx.request_id, held)
            return
        if settlement.tokens_minute is not None and settlement.tokens_delta:
            counters = counter_id(ctx.key.key_id, settlement.shard)
            self._seen.settled(counters, settlement.tokens_minute, settlement.tokens_delta)

    def _settle_later(self, ctx: RequestContext, outcome: StreamOutcome, settlement: Settlement) -> None:
        """The settlement DynamoDB did not take in time, retried from a thread after the response (on Lambda, in
        this environment's next invocations) with the same client request token, so an attempt that was applied
        unseen is answered as applied, not booked twice. Refused: another party settled the request first."""
        rid = settlement.record.request_id

        def done(settled: bool) -> None:
            if not settled:
                self._refused_late(settlement.record, self._ledger_holds_now(rid))
            elif self._witness is not None:
                self._witness.counted_late(ctx, outcome, settlement.record)

        settle = functools.partial(self._stores.limits.settle, settlement, attempts=1)
        write_later(f"settle {rid}", settle, done, "the reconciler settles it as lost")

    async def _ledger_holds(self, request_id: str, until: float) -> LedgerNote:
        """What the ledger holds for a request whose settlement it refused (one consistent read)."""
        try:
            return await bounded(self._ledger_holds_now, request_id, until=until)
        except StoreUnavailable:
            return LedgerNote("refused")

    def _ledger_holds_now(self, request_id: str) -> LedgerNote:
        try:
            item = self._stores.requests.get(request_id) or {}
        except StoreUnavailable:
            return LedgerNote("refused")
        reason = item.get("termination_reason")
        if reason == TerminationReason.LOST.value:  # the reconciler's, rebuilt as it wrote it: its last checkpoint
            return LedgerNote("refused", reason, lost_record(layout.unfinished_of(item), self._pricer))
        return LedgerNote("refused", None if reason is None else str(reason))

    def _refused_late(self, record: UsageRecord, held: LedgerNote) -> None:
        """A settlement the ledger refused (another party settled the request first): the record this relay would
        have written, in full, beside what the ledger holds, to correct it from the logs if need be."""
        extra: dict[str, Any] = {"usage_record": record.as_json(), "ledger_reason": held.reason}
        if held.record is not None:
            extra["ledger_record"] = held.record.as_json()
        self._log.warning("late settlement refused", extra=extra)

    def _note(self, request_id: str, note: LedgerNote) -> None:
        if self._witness is not None:
            self._witness.note(request_id, note)

    async def _reserved(self, ctx: RequestContext, until: float) -> Decimal:
        """The budget reservation to swap for the cost: the request's own account of it, unless an extension's
        outcome is unknown; then what its request item holds (every applied extension noted itself there)."""
        budget = ctx.ticket.budget if ctx.ticket is not None else None
        if budget is None:
            return Decimal(0)
        if not budget.uncertain:
            return budget.usd
        item = await bounded(self._stores.requests.get, ctx.request_id, until=until)
        return Decimal(str((item or {}).get("reserved_usd", budget.usd)))
