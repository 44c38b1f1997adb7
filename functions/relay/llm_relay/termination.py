"""Termination reasons: exactly one per stream, so that every request's record, log line and metric says how it
ended in one word, and the tables that go with them: what each reason means (`MEANINGS`), which reason an exception
ends a request with (`reason_for`), which error type a failed stream's terminal error carries (`error_type_of`), and
which HTTP status a request that ends before its first byte answers with
(`HTTP_STATUS`, `ERROR_CODE_STATUS`). The errors reference (docs/reference/errors.md) is generated from them."""

from __future__ import annotations

from enum import StrEnum

from .errors import RelayError, RequestCancelled, UpstreamTimeout


class TerminationReason(StrEnum):
    """How a stream ended. `is_failure`: it ends with a terminal error object; `is_unfinished`: the model did not
    finish its answer (a failure, a cancel, or a request the reconciler settled as `lost`)."""

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
    LOST = "lost"
    LEDGER_UNAVAILABLE = "ledger_unavailable"

    @property
    def is_failure(self) -> bool:
        """Failures end a stream with a terminal error object instead of a normal end."""
        return self in _FAILURES

    @property
    def is_unfinished(self) -> bool:
        return self in _FAILURES or self in (TerminationReason.CLIENT_CANCELLED, TerminationReason.LOST)


MEANINGS = {
    TerminationReason.STOP: "The model finished its answer (the upstream's `finish_reason` `stop`, or one the relay "
    "does not know: the model did finish).",
    TerminationReason.LENGTH: "The model reached `max_tokens` (`finish_reason` `length`).",
    TerminationReason.CONTENT_FILTER: "The provider's content filter stopped the answer, or the relay's compliance "
    "gate ended it with a terminal error: `content_filtered` (a block), or `guardrail_unavailable` (the guardrail "
    "failed, closed).",
    TerminationReason.TOOL_CALLS: "The model called tools (`finish_reason` `tool_calls`, or `function_call`).",
    TerminationReason.CLIENT_CANCELLED: "The client disconnected or called the cancel endpoint.",
    TerminationReason.UPSTREAM_ERROR: "The upstream failed: an error status after admission, a reset, a malformed "
    'event, an `{"error"}` event, or a `finish_reason` that reports a failure (`error`, `abort`).',
    TerminationReason.UPSTREAM_TIMEOUT: "No upstream bytes for `RELAY_UPSTREAM_IDLE_TIMEOUT_S`, or no first token "
    "within `RELAY_UPSTREAM_FIRST_TOKEN_TIMEOUT_S`.",
    TerminationReason.DEADLINE: "The function's remaining time ran short: the stream ended `RELAY_DEADLINE_MARGIN_S` "
    "before the deadline, so its terminal event and usage record still get out.",
    TerminationReason.INCOMPLETE: "The upstream closed the stream without a `finish_reason`.",
    TerminationReason.BUDGET_EXCEEDED: "The key's budget could not cover the next reserved increment: the stream "
    "ended at the tokens it had reserved.",
    TerminationReason.LOST: "Written by the reconciler, never by a stream: the relay stopped without finalizing "
    "(killed, out of memory), and the usage is the last checkpoint's estimate.",
    TerminationReason.LEDGER_UNAVAILABLE: "The stream's lease could not be renewed (DynamoDB unreachable for most of "
    "`RELAY_LEASE_S`, or the process paused past it): the stream ended itself before the lease could expire, since "
    "past it a reconciler may settle the request under a stream that still runs.",
}

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


# Termination reason -> the OpenAI error `type` of the terminal error object that ends a failed stream (and the body of
# a failed `stream: false` answer); any other failure is the upstream's.
ERROR_TYPE = {
    TerminationReason.CLIENT_CANCELLED: "invalid_request_error",
    TerminationReason.BUDGET_EXCEEDED: "rate_limit_error",
}
DEFAULT_ERROR_TYPE = "upstream_error"
# The terminal error's own code -> its error `type`, where the code is not the reason's (the compliance gate's).
ERROR_CODE_TYPE = {
    "content_filtered": "invalid_request_error",
    "guardrail_unavailable": "server_error",
}


def error_type_of(reason: TerminationReason, code: str | None = None) -> str:
    """The error `type` of a failed stream's terminal error: its own code's, else its reason's."""
    if code is not None and code in ERROR_CODE_TYPE:
        return ERROR_CODE_TYPE[code]
    return ERROR_TYPE.get(reason, DEFAULT_ERROR_TYPE)


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
# answer, or a stream that had sent nothing yet): the compliance gate's refusals, and an answer refused as invalid.
ERROR_CODE_STATUS = {
    "content_filtered": 400,
    "guardrail_unavailable": 503,
    "invalid_output": 502,
}
ERROR_CODE_MEANINGS = {
    "content_filtered": "The compliance gate blocked the answer: the sanitizer in `block` mode found a value of a "
    "blocked entity type (the message names the type), or the Bedrock guardrail intervened.",
    "guardrail_unavailable": "The Bedrock guardrail failed or timed out, and `RELAY_GUARDRAIL_ON_ERROR` is "
    "`fail_closed`.",
    "invalid_output": "The answer failed the relay's validation (`RELAY_VALIDATE=enforce`): not the JSON its "
    "`response_format` asked for, or a tool call's arguments not a JSON object. The termination reason stays the "
    "upstream's (the answer was generated and is billed); a 502 when nothing had been sent.",
}
