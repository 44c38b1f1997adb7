"""What one request produced, handed to every finalizer (usage records, metrics, logs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from .chat_request import ChatRequest
from .keys import ApiKey
from .metering import Usage
from .termination import TerminationReason


@dataclass(slots=True)
class RequestContext:
    request_id: str
    key: ApiKey
    chat: ChatRequest
    mode: str  # "sse", "ndjson" or "json"
    started_at: float  # monotonic
    started_epoch: float
    deadline: float | None = None  # monotonic time by which the response must have ended
    retries: int = 0
    upstream_errors: dict[str, int] = field(default_factory=dict)
    lambda_request_id: str | None = None  # from the web adapter's x-amzn-lambda-context, for log correlation


@dataclass(slots=True)
class StreamOutcome:
    reason: TerminationReason
    usage: Usage
    ttft_s: float | None
    tpot_s: float | None
    duration_s: float
    chunks: int
    error: str | None = None
    cancel_source: str | None = None  # "disconnect" or "cancel_call"
    cancel_latency_s: float | None = None
    cost_usd: Decimal | None = None  # None: the model has no price


class Finalizer(Protocol):
    """Runs once per admitted request, before the response body closes; must not raise."""

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None: ...
