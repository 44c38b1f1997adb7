"""The relay's limits on one set of stores: admission (`admit`), a running stream's budget extensions (`extend`) and
settlement (`settle`), sharing what this process knows of each key's counters (`seen`). Built once by the
composition root (`app.create_app`), which gives it the reconciler that admission uses for expired leases."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from ..dynamo import Stores
from ..outcome import RequestContext, StreamOutcome, Ticket
from ..pricing import Pricer
from ..settings import Settings
from .admit import Admitter, SettlesExpired
from .budgets import Reservation
from .extend import BudgetGuard, Extender, Extension
from .reporting import Guarded, LimitsMetrics, NoMetrics
from .rules import Limits
from .seen import SeenCounters
from .settle import LedgerWitness, Settler


class Admission(Protocol):
    """What the pipeline asks of the limits: admit a request, guard its budget while it streams, settle it."""

    async def admit(self, ctx: RequestContext) -> Ticket:
        """Admit or raise `RateLimited` (429) / `ServiceUnavailable` (503)."""
        ...

    def budget_guard(self, ctx: RequestContext) -> BudgetGuard | None:
        """The guard over the admitted request's budget reservation (None: it holds none)."""
        ...

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        """Settle the request: its record, what admission took given back or booked."""
        ...


class Limiter:
    """The relay's `Admission`."""

    def __init__(
        self,
        stores: Stores,
        settings: Settings,
        *,
        pricer: Pricer,
        reconciler: SettlesExpired,
        metrics: LimitsMetrics | None = None,
        witness: LedgerWitness | None = None,
        log: Logger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        metrics = Guarded(metrics or NoMetrics())
        log = log or Logger(service=settings.service_name, level=settings.log_level)
        seen = SeenCounters()
        self._admitter = Admitter(
            stores,
            settings,
            seen=seen,
            pricer=pricer,
            reconciler=reconciler,
            metrics=metrics,
            log=log,
            clock=clock,
        )
        self._extender = Extender(stores, settings, metrics)
        self._settler = Settler(
            stores, settings, seen=seen, pricer=pricer, metrics=metrics, log=log, witness=witness, clock=clock
        )

    def limits_for(self, overrides: Mapping[str, Any]) -> Limits:
        return self._admitter.limits_for(overrides)

    async def admit(self, ctx: RequestContext) -> Ticket:
        return await self._admitter.admit(ctx)

    def budget_guard(self, ctx: RequestContext) -> BudgetGuard | None:
        """The stream's guard over its admission's budget reservation (None: the request reserved nothing)."""
        reservation = ctx.ticket.budget if ctx.ticket is not None else None
        if reservation is None:
            return None
        return BudgetGuard(reservation, lambda held, tokens: self._extender.extend(ctx, held, tokens))

    async def extend_budget(self, ctx: RequestContext, reservation: Reservation, tokens: int) -> Extension:
        """One extension write for `ctx`'s reservation, its answer not yet recorded on it (the guard does that)."""
        return await self._extender.extend(ctx, reservation, tokens)

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        await self._settler.finalize(ctx, outcome)
