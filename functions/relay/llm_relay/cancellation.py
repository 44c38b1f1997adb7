"""Cancellation registry: the streams this process runs, and the explicit-cancel poller.

A Lambda function URL never tells the function that its client left, so a client can also cancel with
`POST /v1/requests/{id}/cancel`, on any instance: that writes a cancel mark in DynamoDB. Each process
polls the marks of all of its running streams in one BatchGetItem per interval (not one read per stream),
and sets the stream's event; a cancel taken by the same process sets it at once.

A request registers before admission, so the poller watches it from then on, through the upstream open and its
retries. One sent with a client-chosen id (`X-Client-Request-Id`) is also watched under that id: its cancel mark
may be written before the request exists (the cancel call cannot know), and the same poll reads it.

Every cancel call writes to DynamoDB, so each key's calls are bounded (`CancelCalls`): a burst and a rate from the
key's own limits; past them the call is refused with 429 and writes nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import anyio
import anyio.to_thread

from .cancel_signal import CancelSignal
from .dynamo import RequestStore
from .errors import RateLimited, StoreUnavailable
from .keys import ApiKey
from .limits.rules import CancelAllowance, Limits, cancel_allowance, format_duration, retry_after_s

logger = logging.getLogger(__name__)


class CancelCalls:
    """Each key's cancel calls in this process, against its allowance (`limits.cancel_allowance`): a bucket per key,
    full at first, refilled at the allowance's rate. A call past it is refused (429, with Retry-After) before anything
    is written. The buckets are per process: on Lambda each execution environment keeps its own, so a key spreading
    its calls over N environments at once gets N bursts (the function's concurrency bounds N)."""

    MAX_KEYS = 10_000  # past this many buckets, the full ones (keys idle long enough) are dropped

    def __init__(self, defaults: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._defaults = defaults  # the deployment's limits, for what a key does not set itself
        self._clock = clock
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key id -> (calls left, as of, full again at)

    def take(self, key: ApiKey) -> None:
        """Count one cancel call of `key`, or refuse it (RateLimited) when its bucket is empty."""
        allowance = cancel_allowance(Limits.resolve(key.limits, self._defaults))
        per_s = allowance.per_minute / 60
        now = self._clock()
        left, since, _ = self._buckets.get(key.key_id, (allowance.burst, now, now))
        left = min(float(allowance.burst), left + (now - since) * per_s)
        taken = left >= 1
        left -= taken
        self._buckets[key.key_id] = (left, now, now + (allowance.burst - left) / per_s)
        if not taken:
            raise _too_many(allowance, math.ceil((1 - left) / per_s * 1000))
        if len(self._buckets) > self.MAX_KEYS:
            self._buckets = {k: bucket for k, bucket in self._buckets.items() if bucket[2] > now}


def _too_many(allowance: CancelAllowance, wait_ms: int) -> RateLimited:
    error = RateLimited(
        f"Too many cancel calls for this key: at most {allowance.burst} at once and {allowance.per_minute} a minute"
        f" (from its request limits). Please try again in {format_duration(wait_ms)}."
    )
    error.headers.update({"retry-after": str(retry_after_s(wait_ms)), "retry-after-ms": str(wait_ms)})
    return error


class CancelRegistry:
    def __init__(self, store: RequestStore, interval_s: float, calls: CancelCalls | None = None) -> None:
        self._store = store
        self._interval = interval_s
        self.calls = calls or CancelCalls(Limits())  # the cancel calls' bound (pipeline.Pipeline.cancel)
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
