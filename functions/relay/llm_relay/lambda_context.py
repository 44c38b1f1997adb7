"""The Lambda invocation a request belongs to (pure), read once from the `x-amzn-lambda-context` header.

Under the web adapter there is no Lambda handler, so the adapter passes the invocation's context as a JSON
header: its `request_id` correlates logs, its `deadline` (epoch ms) bounds the stream. Outside the adapter a
client could send the header itself, so the deadline is never trusted beyond the configured function timeout.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

HEADER = "x-amzn-lambda-context"


@dataclass(frozen=True, slots=True)
class LambdaInvocation:
    request_id: str | None = None
    deadline_epoch_s: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> LambdaInvocation:
        raw = headers.get(HEADER)
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except ValueError:
            logger.warning("ignoring unreadable %s header", HEADER)
            return cls()
        if not isinstance(data, dict):
            return cls()
        request_id = data.get("request_id")
        return cls(str(request_id) if request_id else None, _deadline_s(data.get("deadline")))

    def deadline(self, *, now_epoch: float, now_monotonic: float, timeout_s: float, margin_s: float) -> float:
        """When the stream must end (monotonic): the invocation's deadline, else the function timeout, and
        never later than the function timeout; minus the safety margin."""
        remaining = timeout_s
        if self.deadline_epoch_s is not None:
            remaining = min(remaining, self.deadline_epoch_s - now_epoch)
        return now_monotonic + remaining - margin_s


def _deadline_s(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw) / 1000
    except ValueError:
        return None
    return value if math.isfinite(value) else None
