"""Cancellation registry: the streams this process runs, and the explicit-cancel poller.

A Lambda function URL never tells the function that its client left, so a client can also cancel with
`POST /v1/requests/{id}/cancel`, on any instance: that writes a cancel mark in DynamoDB. Each process
polls the marks of all of its running streams in one BatchGetItem per interval (not one read per stream),
and sets the stream's event; a cancel taken by the same process sets it at once.
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.to_thread

from .dynamo import RequestStore
from .errors import StoreUnavailable

logger = logging.getLogger(__name__)


class CancelRegistry:
    def __init__(self, store: RequestStore, interval_s: float) -> None:
        self._store = store
        self._interval = interval_s
        self._events: dict[str, anyio.Event] = {}
        self._cancelled_at: dict[str, float] = {}
        self._poller_running = False

    def register(self, request_id: str) -> anyio.Event:
        event = anyio.Event()
        self._events[request_id] = event
        return event

    def unregister(self, request_id: str) -> None:
        self._events.pop(request_id, None)
        self._cancelled_at.pop(request_id, None)

    def cancel_local(self, request_id: str) -> bool:
        """Set the event of a stream running in this process; False if it runs elsewhere."""
        event = self._events.get(request_id)
        if event is None:
            return False
        self._cancelled_at.setdefault(request_id, time.monotonic())
        event.set()
        return True

    def cancelled_at(self, request_id: str) -> float | None:
        return self._cancelled_at.get(request_id)

    async def run_poller(self) -> None:
        """Poll cancel marks while streams run. Started by the app's lifespan; cheap when idle."""
        while True:
            await anyio.sleep(self._interval)
            ids = [rid for rid, event in self._events.items() if not event.is_set()]
            if not ids:
                continue
            try:
                marked = await anyio.to_thread.run_sync(self._store.cancelled_among, ids)
            except StoreUnavailable as exc:
                logger.warning("cancel poll failed: %s", exc)
                continue
            except Exception:  # never let one bad poll stop cancellation for the whole process
                logger.exception("cancel poll failed")
                continue
            for rid in marked:
                self.cancel_local(rid)
