"""Admission: the seam where per-key limits decide before the upstream call (docs/design.md, "Admission in one
DynamoDB transaction").

The implementation is `limiter.Limiter`: one atomic conditional DynamoDB write that also registers the
in-flight request (so the explicit cancel can find it). Tests may pass their own to `create_app`.
`admit` returns a `Ticket`; the request carries it (`RequestContext.ticket`) to finalization, which gives
back or settles what the ticket says was taken.
"""

from __future__ import annotations

from typing import Protocol

from .outcome import RequestContext, Ticket

__all__ = ["Admission", "Ticket"]


class Admission(Protocol):
    async def admit(self, ctx: RequestContext) -> Ticket:
        """Admit or raise `RateLimited` (429) / `ServiceUnavailable` (503)."""
        ...
