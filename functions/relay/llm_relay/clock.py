"""Time as the stream sees it: one monotonic clock, injectable so tests drive timers without waiting."""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return once `now()` has reached `when` (at once if it has)."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: float) -> None:
        await anyio.sleep(max(0.0, when - time.monotonic()))


MONOTONIC = MonotonicClock()
