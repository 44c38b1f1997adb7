"""Waiting for the event a test checks, never for a length of time: poll a condition until it holds, with a
generous overall bound that only a real failure (or a machine stalled for half a minute) reaches."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The bound of every wait in the suite: it only decides how long a failing test takes to fail.
PATIENCE_S = 30.0


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = PATIENCE_S, interval: float = 0.005) -> T:
    """The first truthy value `condition()` returns; AssertionError naming `what` if none within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)
