"""Finalization of an admitted request: mark the in-flight request finished, log one summary line.

Runs before the response body closes (Lambda freezes the sandbox once the response ends), never raises
into the stream: a failure here is logged, never turned into a broken response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio.to_thread

from .outcome import Finalizer, RequestContext, StreamOutcome
from .store import RelayStore, StoreUnavailable

logger = logging.getLogger(__name__)


class RequestTracker:
    """Marks the request item finished (the explicit cancel then answers 'finished')."""

    def __init__(self, store: RelayStore) -> None:
        self._store = store

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        try:
            await anyio.to_thread.run_sync(self._store.finish_request, ctx.request_id, outcome.reason.value)
        except StoreUnavailable as exc:
            logger.warning("could not mark request %s finished: %s", ctx.request_id, exc)


class Finalizers:
    """Runs several finalizers in order; one failing does not stop the others."""

    def __init__(self, parts: Sequence[Finalizer]) -> None:
        self._parts = list(parts)

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        for part in self._parts:
            try:
                await part.finalize(ctx, outcome)
            except Exception:
                logger.exception("finalizer %s failed for request %s", type(part).__name__, ctx.request_id)
