"""Admission (DESIGN §2 step 3): the seam where per-key limits decide before the upstream call.

The implementation is `limiter.Limiter`: one atomic conditional DynamoDB write that also registers the
in-flight request (so the explicit cancel can find it). Tests may pass their own to `create_app`.
"""

from __future__ import annotations

from typing import Protocol

from .outcome import RequestContext


class Admission(Protocol):
    async def admit(self, ctx: RequestContext) -> dict[str, str]:
        """Admit or raise `RateLimited`; returns headers for the response (x-ratelimit-*)."""
        ...
