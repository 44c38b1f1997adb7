"""The stream's side of a budget reservation: let a completion token through only if it was reserved, and reserve
the next increment ahead of need, off the token path.

The pump asks `allow(n)` before it passes on the n-th completion token (one content chunk ≈ one token, as the
meter counts them). At `Reservation.extend_at` the guard starts the extension write in the response's task group
and returns at once; the pump waits only if it reaches the end of what is reserved before the write answered
(a very fast upstream, or a slow store). A refused extension ends the stream when the reserved tokens are used
up: `allow` answers False, and that token never reaches the client (the record counts it: it was generated).

A write still pending when the stream ends does not hold the terminal frame back: the guard runs in the
response's task group, which outlives the pump, and finalization waits for the write (`settled`) before it swaps
the reservation for the cost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup

from .budgets import Reservation
from .metering import delta_tokens

if TYPE_CHECKING:
    from .outcome import RequestContext

logger = logging.getLogger(__name__)

Extend = Callable[[Reservation, int], Awaitable[bool]]
"""Reserve so many more completion tokens (granting them on the reservation); False when refused."""


class BudgetExtender(Protocol):
    """What grants extensions (the limiter): one conditional write per call."""

    async def extend_budget(self, ctx: RequestContext, reservation: Reservation, tokens: int) -> bool: ...


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
            try:
                granted = await self._extend(self.reservation, self.reservation.next_tokens())
            except Exception:
                logger.exception("budget extension failed")
                self.reservation.uncertain = True  # it may have been applied: settlement reads what is held
                granted = False
            if not granted:
                self.refused = True
            self._pending = None
            done.set()
