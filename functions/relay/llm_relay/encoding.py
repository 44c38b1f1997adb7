"""What the client reads (pure): the framings (OpenAI SSE and NDJSON, both taking the same chunk objects) and
the bodies a stream ends with (the NDJSON summary line, the terminal error object, the `stream: false` error).
"""

from __future__ import annotations

from typing import Any, Protocol

from .durations import millis
from .json_text import dumps
from .outcome import StreamOutcome
from .termination import TerminationReason, error_type_of
from .validation import INVALID_OUTPUT


class Framing(Protocol):
    media_type: str
    heartbeat: bytes
    nudge: bytes

    def chunk(self, chunk: dict[str, Any]) -> bytes: ...
    def end(self, summary: dict[str, Any]) -> bytes: ...
    def error(self, error: dict[str, Any]) -> bytes: ...


class SSEFraming:
    """`data: {chunk}\\n\\n` … `data: [DONE]\\n\\n`, exactly as OpenAI frames it."""

    media_type = "text/event-stream"
    heartbeat = b": ping\n\n"
    nudge = b"\n"

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return f"data: {dumps(chunk)}\n\n".encode()

    def end(self, summary: dict[str, Any]) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, error: dict[str, Any]) -> bytes:
        return f"data: {dumps(error)}\n\n".encode()


class NDJSONFraming:
    """One chunk object per line, then one `relay.summary` line (or an `{"error": …}` line)."""

    media_type = "application/x-ndjson"
    heartbeat = b"\n"
    nudge = b"\n"

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return f"{dumps(chunk)}\n".encode()

    def end(self, summary: dict[str, Any]) -> bytes:
        return f"{dumps(summary)}\n".encode()

    def error(self, error: dict[str, Any]) -> bytes:
        return f"{dumps(error)}\n".encode()


def summary_body(request_id: str, model: str, outcome: StreamOutcome, *, sanitized: bool = False) -> dict[str, Any]:
    """The NDJSON `relay.summary` line of a stream that ended normally; `sanitized`: with the compliance gate's
    counts by entity type (`redactions`)."""
    cost = outcome.cost_usd
    return {
        "object": "relay.summary",
        "id": request_id,
        "model": model,
        "finish_reason": outcome.finish_reason,
        "termination_reason": outcome.reason.value,
        "usage": {**outcome.usage.as_openai(), "estimated": outcome.usage.estimated},
        "cost_usd": None if cost is None else format(cost, "f"),
        "ttft_ms": millis(outcome.ttft_s),
        "tpot_ms": millis(outcome.tpot_s),
        "duration_ms": millis(outcome.duration_s),
        "chunks": outcome.chunks,
        **({"redactions": dict(outcome.redactions), "holdback_chars": outcome.holdback_chars} if sanitized else {}),
        **({"validation": outcome.validation.as_json()} if outcome.validation is not None else {}),
    }


def error_body(request_id: str, outcome: StreamOutcome) -> dict[str, Any]:
    """The terminal error object of a stream that failed (and the body of a failed `stream: false` answer)."""
    message = outcome.error or f"The stream ended without a finish_reason ({outcome.reason.value})."
    error_type = error_type_of(outcome.reason, outcome.error_code)
    extra: dict[str, Any] = {}
    if outcome.validation is not None:  # the answer's check; `invalid_output` is the upstream's answer refused
        extra["validation"] = outcome.validation.as_json()
    if outcome.error_code is not None and outcome.error_code != INVALID_OUTPUT:  # the compliance gate: entity types
        extra["entity_types"] = list(outcome.blocked)
    elif outcome.reason is TerminationReason.CLIENT_CANCELLED:
        message = "The request was cancelled."
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": None,
            "code": outcome.error_code or outcome.reason.value,
            "request_id": request_id,
            **extra,
        }
    }
