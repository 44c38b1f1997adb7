"""Finalization of an admitted request: the parts (usage record and limits settlement, telemetry, dev echo)
run in order before the response body closes (Lambda freezes the sandbox once the response ends), and never
raise into the stream: a failure here is logged, never turned into a broken response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .outcome import Finalizer, RequestContext, StreamOutcome

logger = logging.getLogger(__name__)


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
