"""Lease renewal (DESIGN §4): while a request runs, its lease on the request item is extended every third of
`RELAY_LEASE_S`, and its progress checkpointed in the same write. One renewal round per process covers all of
its requests (one TransactWriteItems per 100), so the cost per request does not grow with the streams in flight.

A relay that dies stops renewing; its requests' leases run out within one lease and the reconciler settles them
as `lost` from their last checkpoint (reconciler.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from .dynamo import RequestStore
from .errors import StoreUnavailable
from .ledger import lease_until, renewal_interval

logger = logging.getLogger(__name__)

Progress = Callable[[], dict[str, Any]]  # the request's checkpoint (`cp_*` attributes), as of now


class LeaseKeeper:
    def __init__(self, store: RequestStore, lease_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._lease_s = lease_s
        self._clock = clock
        self._progress: dict[str, Progress] = {}

    def track(self, request_id: str, progress: Progress) -> None:
        """Renew this request's lease from now on (again with a newer `progress` once its stream exists)."""
        self._progress[request_id] = progress

    def untrack(self, request_id: str) -> None:
        self._progress.pop(request_id, None)

    @property
    def tracked(self) -> int:
        return len(self._progress)

    async def run(self) -> None:
        """Renew every third of the lease while requests run. Started by the app's lifespan."""
        while True:
            await anyio.sleep(renewal_interval(self._lease_s))
            await self.renew_now()

    async def renew_now(self) -> None:
        """One renewal round. Bounded: a round that outlasts the interval is abandoned (the next one retries;
        a lease survives two failed rounds)."""
        checkpoints = {rid: progress() for rid, progress in list(self._progress.items())}
        if not checkpoints:
            return
        until = lease_until(self._clock(), self._lease_s)
        gone: set[str] = set()
        with anyio.move_on_after(renewal_interval(self._lease_s)):
            try:
                gone = await anyio.to_thread.run_sync(self._store.renew, until, checkpoints, abandon_on_cancel=True)
            except StoreUnavailable as exc:
                logger.warning("lease renewal of %d requests failed: %s", len(checkpoints), exc)
            except Exception:  # never let one bad round stop renewals for the whole process
                logger.exception("lease renewal failed")
        for rid in gone:
            logger.warning("request %s was settled elsewhere (lease expired); its renewals stop", rid)
            self.untrack(rid)
