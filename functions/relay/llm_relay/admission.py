"""Admission (DESIGN §2 step 3): the seam where per-key limits decide before the upstream call.

`Unlimited` only registers the in-flight request (so the explicit cancel can find it); the limits
implementation replaces it with one atomic conditional DynamoDB write that also registers the request.
"""

from __future__ import annotations

from typing import Protocol

import anyio.to_thread

from .errors import ServiceUnavailable
from .outcome import RequestContext
from .store import RelayStore, StoreUnavailable


class Admission(Protocol):
    async def admit(self, ctx: RequestContext) -> dict[str, str]:
        """Admit or raise `RateLimited`; returns headers for the response (x-ratelimit-*)."""
        ...


class Unlimited:
    def __init__(self, store: RelayStore, ttl_s: int) -> None:
        self._store = store
        self._ttl_s = ttl_s

    async def admit(self, ctx: RequestContext) -> dict[str, str]:
        try:
            await anyio.to_thread.run_sync(self._store.register_request, ctx.request_id, ctx.key.key_id,
                                           ctx.chat.model, self._ttl_s)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("The request store is unavailable; try again shortly.") from exc
        return {}
