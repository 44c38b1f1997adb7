"""Admission (DESIGN §2 step 3): the seam where per-key limits decide before the upstream call.

The implementation is `limiter.Limiter`: one atomic conditional DynamoDB write that also registers the
in-flight request (so the explicit cancel can find it). Tests may pass their own to `create_app`.
`admit` returns a `Ticket`; the request carries it (`RequestContext.ticket`) to finalization, which gives
back or settles what the ticket says was taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .budgets import Reservation
    from .outcome import RequestContext


@dataclass(frozen=True, slots=True)
class Ticket:
    """What admission granted one request."""

    headers: Mapping[str, str] = field(default_factory=dict)  # x-ratelimit-* for the response
    minute: int | None = None  # the rate window the request was counted in
    reserve: int = 0  # tokens reserved against the tokens-per-minute limit
    lease: str | None = None  # the concurrency lease to release (None: no concurrency limit)
    settle_tokens: bool = False  # whether the token reservation is settled against actual usage
    budget: Reservation | None = None  # the budget reservation (None: no budget, or an unpriced model allowed)


class Admission(Protocol):
    async def admit(self, ctx: RequestContext) -> Ticket:
        """Admit or raise `RateLimited` (429) / `ServiceUnavailable` (503)."""
        ...
