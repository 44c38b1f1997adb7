"""Cancellation registry: the streams this process runs, and the explicit-cancel poller.

A Lambda function URL never tells the function that its client left, so a client can also cancel with
`POST /v1/requests/{id}/cancel`, on any instance: that writes a cancel mark in DynamoDB. Each process
polls the marks of all of its running streams in one BatchGetItem per interval (not one read per stream),
and sets the stream's event; a cancel taken by the same process sets it at once.

A request registers before admission, so the poller watches it from then on, through the upstream open and its
retries. One sent with a client-chosen id (`X-Client-Request-Id`) is also watched under that id: its cancel mark
may be written before the request exists (the cancel call cannot know), and the same poll reads it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from .dynamo import RequestStore
from .errors import StoreUnavailable

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class CancelSignal:
    """One request's explicit cancel: set once, with the (monotonic) time it was asked for."""

    event: anyio.Event = field(default_factory=anyio.Event)
    requested_at: float | None = None

    def set(self, at: float) -> None:
        if self.requested_at is None:
            self.requested_at = at
        self.event.set()

    @property
    def is_set(self) -> bool:
        return self.event.is_set()


class CancelRegistry:
    def __init__(self, store: RequestStore, interval_s: float) -> None:
        self._store = store
        self._interval = interval_s
        self._signals: dict[str, CancelSignal] = {}
        self._client_ids: dict[str, tuple[str, str]] = {}  # request id -> (key id, client id)

    def register(self, request_id: str, client: tuple[str, str] | None = None) -> CancelSignal:
        """Watch a request from now on; `client` (key id, client id) also watches its client id's mark."""
        signal = self._signals[request_id] = CancelSignal()
        if client is not None:
            self._client_ids[request_id] = client
        return signal

    def unregister(self, request_id: str) -> None:
        self._signals.pop(request_id, None)
        self._client_ids.pop(request_id, None)

    def cancel_local_client(self, key_id: str, client_request_id: str) -> bool:
        """Set the signal of the stream this process runs under a key's client id; False if none."""
        found = [rid for rid, client in self._client_ids.items() if client == (key_id, client_request_id)]
        return any([self.cancel_local(rid) for rid in found])

    def cancel_local(self, request_id: str) -> bool:
        """Set the signal of a stream running in this process; False if it runs elsewhere."""
        signal = self._signals.get(request_id)
        if signal is None:
            return False
        signal.set(time.monotonic())
        return True

    async def run_poller(self) -> None:
        """Poll cancel marks while streams run. Started by the app's lifespan; cheap when idle."""
        while True:
            await anyio.sleep(self._interval)
            ids = [rid for rid, signal in self._signals.items() if not signal.is_set]
            if not ids:
                continue
            try:
                clients = {rid: self._client_ids[rid] for rid in ids if rid in self._client_ids}
                marked = await anyio.to_thread.run_sync(self._store.cancelled_among, ids, clients)
            except StoreUnavailable as exc:
                logger.warning("cancel poll failed: %s", exc)
                continue
            except Exception:  # never let one bad poll stop cancellation for the whole process
                logger.exception("cancel poll failed")
                continue
            for rid in marked:
                self.cancel_local(rid)
