"""Lease renewal (docs/design.md, "The ledger loses nothing"): while a request runs, its lease on the request item is
extended every third of `RELAY_LEASE_S`, and its progress checkpointed in the same write. One renewal round per process
covers all of its requests (one TransactWriteItems per 100), so the cost per request does not grow with the streams in
flight.

A relay that dies stops renewing; its requests' leases run out within one lease and the reconciler settles them
as `lost` from their last checkpoint (reconciler.py).

A relay that is alive but cannot renew (DynamoDB unreachable, or the process paused and resumed) must not outlive
its leases either: past a lease, a reconciler may settle the request while its stream still runs, freeing its slot
and leaving its later tokens unrecorded. So each request's `Lease` says until when it is surely held (the expiry of
the last renewal DynamoDB confirmed), and the stream ends itself before then (`stream.RelayStream`, reason
`ledger_unavailable`), or at once when a renewal finds the request settled already.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.to_thread

from .dynamo import RequestStore
from .dynamo.request_store import SETTLED
from .errors import StoreUnavailable
from .ledger import Checkpoint, lease_until, renewal_interval, stream_end_by

logger = logging.getLogger(__name__)

Progress = Callable[[], Checkpoint | None]  # the request's checkpoint as of now (None: none yet, the lease alone)


def no_checkpoint() -> Checkpoint | None:
    """The progress of a request that has none to report yet (before its stream): its lease is renewed alone."""
    return None


Clock = Callable[[], float]  # epoch seconds: leases are compared with the reconciler's clock, not a monotonic one


class Lease:
    """One request's lease as this process knows it: held surely until `held_until` (epoch s, the expiry the last
    confirmed write gave it), or settled by another party (a reconciler found it expired)."""

    def __init__(self, held_until: float, lease_s: float, clock: Clock) -> None:
        self.held_until = held_until
        self.end_by = stream_end_by(held_until, lease_s)  # when the stream must have ended itself (epoch s)
        self.settled_elsewhere = False
        self._lease_s = lease_s
        self._clock = clock
        self._changed: anyio.Event | None = None  # made by the first waiter, inside the event loop

    def lapsed(self) -> bool:
        """Whether the stream must end now: its lease may run out before the next renewal is confirmed, or the ledger
        settled the request already. A clock read, cheap enough for every chunk."""
        return self.settled_elsewhere or self._clock() >= self.end_by

    async def wait_lapsed(self) -> None:
        """Return once the lease has lapsed. Wakes at `end_by` (re-read: a renewal moves it later) and at once when a
        renewal finds the request settled; a process resumed after a pause wakes late, and finds it lapsed."""
        while not self.lapsed():
            self._changed = self._changed or anyio.Event()
            with anyio.move_on_after(max(0.0, self.end_by - self._clock())):
                await self._changed.wait()

    def confirm(self, until: float) -> None:
        """A renewal DynamoDB confirmed (the keeper's): the lease is held until `until`."""
        self.held_until = max(self.held_until, until)
        self.end_by = stream_end_by(self.held_until, self._lease_s)

    def mark_settled(self) -> None:
        """A renewal found the request settled by another party (the keeper's): the stream ends at once."""
        self.settled_elsewhere = True
        if self._changed is not None:
            self._changed.set()


class Leases(Protocol):
    """What the pipeline asks of the leases (`LeaseKeeper`; a benchmark may pass one that holds none)."""

    def track(self, request_id: str, progress: Progress, *, since: float | None = None) -> Lease | None: ...

    def untrack(self, request_id: str) -> None: ...

    async def run(self) -> None: ...


@dataclass(slots=True)
class _Tracked:
    progress: Progress
    lease: Lease


class LeaseKeeper:
    def __init__(self, store: RequestStore, lease_s: float, *, clock: Clock = time.time) -> None:
        self._store = store
        self._lease_s = lease_s
        self._clock = clock
        self._tracked: dict[str, _Tracked] = {}

    def track(self, request_id: str, progress: Progress, *, since: float | None = None) -> Lease:
        """Renew this request's lease from now on (again with a newer `progress` once its stream exists); its `Lease`,
        the same one on every call. `since`: when admission granted it (epoch s; default now), so the lease is
        believed held no longer than admission made it."""
        tracked = self._tracked.get(request_id)
        if tracked is not None:
            tracked.progress = progress
            return tracked.lease
        granted = self._clock() if since is None else since
        lease = Lease(granted + self._lease_s, self._lease_s, self._clock)
        self._tracked[request_id] = _Tracked(progress, lease)
        return lease

    def untrack(self, request_id: str) -> None:
        self._tracked.pop(request_id, None)

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    async def run(self) -> None:
        """Renew every third of the lease while requests run. Started by the app's lifespan."""
        while True:
            await anyio.sleep(renewal_interval(self._lease_s))
            await self.renew_now()

    async def renew_now(self) -> None:
        """One renewal round. Bounded: a round that outlasts the interval is abandoned (the next one retries;
        a lease survives two failed rounds). Only a round DynamoDB confirmed moves a request's `held_until`."""
        tracked = dict(self._tracked)
        checkpoints = {rid: entry.progress() for rid, entry in tracked.items()}
        if not checkpoints:
            return
        until = lease_until(self._clock(), self._lease_s)
        gone: dict[str, str] | None = None
        with anyio.move_on_after(renewal_interval(self._lease_s)):
            try:
                gone = await anyio.to_thread.run_sync(self._store.renew, until, checkpoints, abandon_on_cancel=True)
            except StoreUnavailable as exc:
                logger.warning("lease renewal of %d requests failed: %s", len(checkpoints), exc)
            except Exception:  # never let one bad round stop renewals for the whole process
                logger.exception("lease renewal failed")
        if gone is None:
            return  # not confirmed: every lease stays held only as long as its last confirmed renewal says
        for rid, entry in tracked.items():
            why = gone.get(rid)
            if why is None:
                entry.lease.confirm(until)
                continue
            self.untrack(rid)
            if why == SETTLED:
                logger.warning("request %s was settled elsewhere (lease expired); its stream ends", rid)
                entry.lease.mark_settled()
            else:  # admitted without its item (failing open): no lease to outlive, nothing to settle it under it
                entry.lease.confirm(math.inf)
