"""Termination reasons: exactly one per stream (DESIGN §2, the table), and the two tables that go with them:
which reason an exception ends a request with (`reason_for`), and which HTTP status a request that ends before
its first byte answers with (`HTTP_STATUS`)."""

from __future__ import annotations

from enum import StrEnum

from .errors import RelayError, RequestCancelled, UpstreamTimeout


class TerminationReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"
    CLIENT_CANCELLED = "client_cancelled"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    DEADLINE = "deadline"
    INCOMPLETE = "incomplete"
    BUDGET_EXCEEDED = "budget_exceeded"
    LOST = "lost"  # written by the reconciler: the relay stopped without finalizing (killed, out of memory)
    # The stream ended itself before its lease could expire unrenewed (DynamoDB unreachable for most of a lease, or
    # the process paused past it): past the lease a reconciler may settle the request under a running stream.
    LEDGER_UNAVAILABLE = "ledger_unavailable"

    @property
    def is_failure(self) -> bool:
        """Failures end a stream with a terminal error object instead of a normal end."""
        return self in _FAILURES


_FAILURES = frozenset(
    {
        TerminationReason.UPSTREAM_ERROR,
        TerminationReason.UPSTREAM_TIMEOUT,
        TerminationReason.DEADLINE,
        TerminationReason.INCOMPLETE,
        TerminationReason.BUDGET_EXCEEDED,
        TerminationReason.LEDGER_UNAVAILABLE,
    }
)

_FINISH_REASONS = {
    "stop": TerminationReason.STOP,
    "length": TerminationReason.LENGTH,
    "content_filter": TerminationReason.CONTENT_FILTER,
    "tool_calls": TerminationReason.TOOL_CALLS,
    "function_call": TerminationReason.TOOL_CALLS,
    # Providers that report a failure in the finish_reason itself (OpenRouter "error", vLLM "abort"):
    # passing these on as a normal end would be a silent truncation.
    "error": TerminationReason.UPSTREAM_ERROR,
    "abort": TerminationReason.UPSTREAM_ERROR,
}


def reason_from_finish(finish_reason: str | None) -> TerminationReason:
    """Map an upstream `finish_reason` to a termination reason. None (the upstream ended without one)
    is `incomplete`; an unknown value from a provider counts as `stop` (the model did finish)."""
    if finish_reason is None:
        return TerminationReason.INCOMPLETE
    return _FINISH_REASONS.get(finish_reason, TerminationReason.STOP)


# Exception -> termination reason, for a request that ends before its response started (the upstream open
# failed, was cancelled, or ran out of time). Checked in order: the first matching class wins.
_EXCEPTION_REASONS: tuple[tuple[type[RelayError], str | None, TerminationReason], ...] = (
    (RequestCancelled, None, TerminationReason.CLIENT_CANCELLED),
    (UpstreamTimeout, "deadline", TerminationReason.DEADLINE),
    (UpstreamTimeout, None, TerminationReason.UPSTREAM_TIMEOUT),
)


def reason_for(exc: RelayError) -> TerminationReason:
    """The termination reason of an admitted request that ended with `exc` before its first byte."""
    for cls, code, reason in _EXCEPTION_REASONS:
        if isinstance(exc, cls) and (code is None or exc.code == code):
            return reason
    return TerminationReason.UPSTREAM_ERROR


# Termination reason -> HTTP status of a `stream: false` answer that did not complete.
HTTP_STATUS = {
    TerminationReason.UPSTREAM_ERROR: 502,
    TerminationReason.INCOMPLETE: 502,
    TerminationReason.UPSTREAM_TIMEOUT: 504,
    TerminationReason.DEADLINE: 504,
    TerminationReason.CLIENT_CANCELLED: 409,
    TerminationReason.BUDGET_EXCEEDED: 429,
    TerminationReason.LEDGER_UNAVAILABLE: 503,
}

# The terminal error's own code -> the HTTP status of a request that it ends before its first byte (a `stream: false`
# answer, or a stream that had sent nothing yet): the compliance gate's refusals.
ERROR_CODE_STATUS = {
    "content_filtered": 400,
    "guardrail_unavailable": 503,
}
