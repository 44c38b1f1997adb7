"""A running stream's budget (docs/design.md, "Budgets are reservations"): the guard on the token path, and the
extension write it asks for. The guard is the one writer of the request's `Reservation` once it is admitted.

The pump asks `allow(n)` before it passes on the n-th completion token (one content chunk ≈ one token, as the
meter counts them). At `Reservation.extend_at` the guard starts the extension write in the response's task group
and returns at once; the pump waits only if it reaches the end of what is reserved before the write answered
(a very fast upstream, or a slow store). A refused extension ends the stream when the reserved tokens are used
up: `allow` answers False, and that token never reaches the client (the record counts it: it was generated).

A write still pending when the stream ends does not hold the terminal frame back: the guard runs in the
response's task group, which outlives the pump, and finalization waits for the write (`settled`) before it swaps
the reservation for the cost.

The write (`Extender`): one conditional update of the key's day and month spend items, bounded by
`RELAY_ADMISSION_TIMEOUT_S`. DynamoDB unreachable: refused (fail closed) or, with `RELAY_ADMISSION_FAIL_OPEN`, granted
unreserved; either way marked uncertain, since the write may have been applied with its answer lost: settlement then
reads what the request item holds.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..dynamo import Stores
from ..errors import StoreUnavailable
from ..metering import delta_tokens
from ..outcome import RequestContext
from ..settings import Settings
from .budgets import Reservation
from .reporting import LimitsMetrics, bounded

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Extension:
    """The answer to one extension write: whether the tokens may run, the USD now reserved for them (0 when granted
    unreserved, failing open), and whether the write's outcome is unknown."""

    granted: bool
    usd: Decimal = Decimal(0)
    uncertain: bool = False


Extend = Callable[[Reservation, int], Awaitable[Extension]]
"""Reserve so many more completion tokens for the reservation's request (one write); the guard records the answer."""


class Extender:
    def __init__(self, stores: Stores, settings: Settings, metrics: LimitsMetrics) -> None:
        self._stores = stores
        self._settings = settings
        self._metrics = metrics

    async def extend(self, ctx: RequestContext, reservation: Reservation, tokens: int) -> Extension:
        """Reserve `tokens` more completion tokens for a running stream: one conditional write."""
        usd = reservation.cost_of(tokens)
        try:
            extend = functools.partial(
                self._stores.budgets.extend,
                ctx.key.key_id,
                ctx.request_id,
                reservation.periods,
                usd,
                reservation.extensions + 1,
            )
            granted = await bounded(extend, until=time.monotonic() + self._settings.admission_timeout_s)
        except StoreUnavailable as exc:
            granted = self._settings.admission_fail_open
            logger.error("budget extension of %s: store unavailable (%s); granted=%s", ctx.request_id, exc, granted)
            self._metrics.budget_extension("store_error")
            return Extension(granted, Decimal(0), uncertain=True)  # fail open: run unreserved, as admission did
        self._metrics.budget_extension("granted" if granted else "refused")
        return Extension(granted, usd if granted else Decimal(0))


def tokens_in(chunk: dict[str, Any]) -> int:
    """Completion tokens a chunk carries, counted as the meter estimates them (`metering.delta_tokens`): a long
    Bedrock delta or an Ollama tool call arriving whole counts as the text it carries, not as one token, which
    would let a stream run past its reservation."""
    count = 0
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict):
            delta = choice.get("delta") or choice.get("message") or {}
            if isinstance(delta, dict):
                count += delta_tokens(delta)
    return count


class BudgetGuard:
    def __init__(self, reservation: Reservation, extend: Extend) -> None:
        self.reservation = reservation
        self._extend = extend
        self._tg: TaskGroup | None = None
        self._pending: anyio.Event | None = None
        self.refused = False

    def start(self, tg: TaskGroup) -> None:
        """Extensions run in the response's task group: it outlives the pump (a pending write does not delay the
        terminal frame) and ends with the response, never after finalization (`settled`)."""
        self._tg = tg

    async def settled(self) -> None:
        """Wait for the extension in flight, if any: settlement swaps the whole reservation, so it needs that
        write's answer (bounded by the write's own timeout, `RELAY_ADMISSION_TIMEOUT_S`)."""
        pending = self._pending
        if pending is not None:
            await pending.wait()

    async def allow(self, produced: int) -> bool:
        """Whether the `produced`-th completion token is covered by the reservation; asks for the next
        increment ahead of need, and waits for an answer only when the reserved tokens are used up. A chunk
        worth more than one increment (a long delta, a tool call arriving whole) waits for as many as it needs,
        one extension at a time, until it is covered or one is refused."""
        reservation = self.reservation
        while True:
            if produced >= reservation.extend_at and self._pending is None and not self.refused:
                self._begin()
            if produced <= reservation.tokens:
                return True
            pending = self._pending
            if pending is None:  # refused: nothing more will be reserved
                return False
            await pending.wait()

    def _begin(self) -> None:
        done = self._pending = anyio.Event()
        if self._tg is None:
            raise RuntimeError("BudgetGuard.start was not called")
        self._tg.start_soon(self._run, done)

    async def _run(self, done: anyio.Event) -> None:
        """One extension, shielded: once the write is sent its answer must be recorded on the reservation, or
        settlement would release less than was reserved."""
        with anyio.CancelScope(shield=True):
            reservation = self.reservation
            tokens = reservation.next_tokens()
            try:
                answer = await self._extend(reservation, tokens)
            except Exception:
                logger.exception("budget extension failed")
                answer = Extension(False, uncertain=True)
            if answer.uncertain:
                reservation.uncertain = True  # it may have been applied: settlement reads what is held
            if answer.granted:
                reservation.grant(tokens, answer.usd)
            else:
                self.refused = True
            self._pending = None
            done.set()
