"""One request's explicit cancel, as the stream and the upstream open wait for it: set once, by the cancel registry
(`cancellation`), with the time it was asked for. A module of its own so that the stream depends on this signal only,
not on the registry, its poller and the request store."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


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
