"""Per-request telemetry: one structured summary log line (Powertools Logger) and the request's metrics
(EMF), for every admitted request (a `Finalizer`) and every rejected one (`rejected`).

Under the web adapter there is no Lambda handler to decorate, so the Lambda request id comes from the
`x-amzn-lambda-context` header the adapter adds (`lambda_context.py`); it is logged as `lambda_request_id`.
Never logged: prompts, completions, API keys, upstream keys, Authorization values.

Log, metrics and ledger agree: a request's ending, tokens and cost are counted once, by whoever settles it in the
ledger. The relay's own finalization counts them when its settlement is written (`finalize`, or `counted_late`
when a retry writes it after the response); when the ledger refused it because another party settled the request
first (a reconciler, as `lost`), the log line says what the ledger holds and the relay counts nothing; the parties
that settle requests as `lost` (the scheduled reconciler, `llm-relay reconcile`, a refused admission) all count
them through `settled_lost`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools import Logger

from .durations import millis
from .metrics import (
    COMPLETION_TOKENS,
    COST,
    MODEL,
    PROMPT_TOKENS,
    REASON,
    RECONCILED_LOST,
    STREAMS,
    UNPRICED,
    MetricsEmitter,
)
from .outcome import RequestContext, StreamOutcome
from .sanitize.policy import POLICY_VERSION
from .termination import TerminationReason
from .usage import UsageRecord


@dataclass(frozen=True, slots=True)
class LedgerNote:
    """Finalization's word on a request whose settlement is not (yet) this relay's own, for its log line.

    `pending`: DynamoDB did not take the settlement in time; it is retried after the response, and whoever writes
    the request's record counts it. `refused`: another party settled the request first; `reason` and `record` are
    what the ledger holds (None where it could not be read back)."""

    state: Literal["pending", "refused"]
    reason: str | None = None
    record: UsageRecord | None = None


def _policy_text(ctx: RequestContext) -> str:
    policy = ctx.policy
    return f"output={policy.output.mode} prompt={policy.prompt.mode} v{POLICY_VERSION}"


class Telemetry:
    def __init__(self, metrics: MetricsEmitter, logger: Logger) -> None:
        self.metrics = metrics
        self.logger = logger
        self._notes: dict[str, LedgerNote] = {}

    def note(self, request_id: str, note: LedgerNote) -> None:
        """The limiter's finalization, about a request it did not settle itself; read by `finalize` right after."""
        self._notes[request_id] = note

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        note = self._notes.pop(ctx.request_id, None)
        fields = self._fields(ctx, outcome)
        if note is not None:
            fields.update(_as_the_ledger_holds(note, outcome))
        self.logger.info("request finished", extra={k: v for k, v in fields.items() if v is not None})
        if note is None:
            self.metrics.request_finished(ctx, outcome)

    def counted_late(self, ctx: RequestContext, outcome: StreamOutcome, record: UsageRecord) -> None:
        """A settlement that was pending at finalization was written after the response: its record and its metrics,
        counted now (they were held back so that a reconciler's `lost` and this could not both count it)."""
        self.logger.info("usage record written late", extra={"usage_record": record.as_json()})
        self.metrics.request_finished(ctx, outcome)

    def settled_lost(self, records: Sequence[UsageRecord]) -> None:
        """Requests settled as `lost`, by whichever party settled them (the scheduled reconciler, `llm-relay
        reconcile`, a refused admission), counted alike: `RequestsReconciledLost` (its alarm), `StreamsTerminated`
        with reason `lost`, the tokens and cost the ledger booked for them; and one log line each, with the record."""
        if not records:
            return
        self.metrics.emit({RECONCILED_LOST: len(records)})
        self.metrics.emit({STREAMS: len(records)}, {REASON: TerminationReason.LOST.value})
        for record in records:
            figures: dict[str, float] = {
                PROMPT_TOKENS: record.prompt_tokens,
                COMPLETION_TOKENS: record.completion_tokens,
            }
            if record.cost_usd is None:
                figures[UNPRICED] = 1
            else:
                figures[COST] = float(record.cost_usd)
            self.metrics.emit(figures, {MODEL: self.metrics.model_dimension(record.model)})
            self.logger.warning("request settled as lost", extra={"usage_record": record.as_json()})

    def _fields(self, ctx: RequestContext, outcome: StreamOutcome) -> dict[str, Any]:
        return {
            "request_id": ctx.request_id,
            "lambda_request_id": ctx.lambda_request_id,
            "client_request_id": ctx.client_request_id,
            "key_id": ctx.key.key_id,
            "model": ctx.chat.model,
            "mode": ctx.mode,
            "api": ctx.api,
            "upstream": outcome.upstream or None,
            "reason": outcome.reason.value,
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "usage_source": outcome.usage.source,
            "cost_usd": None if outcome.cost_usd is None else format(outcome.cost_usd, "f"),
            "ttft_ms": millis(outcome.ttft_s),
            "tpot_ms": millis(outcome.tpot_s),
            "duration_ms": millis(outcome.duration_s),
            "chunks": outcome.chunks,
            "retries": outcome.retries,
            "upstream_errors": outcome.upstream_errors or None,
            "cancel_source": outcome.cancel_source,
            "cancel_latency_ms": millis(outcome.cancel_latency_s),
            "error": outcome.error,
            "error_code": outcome.error_code,
            "validation": None if outcome.validation is None else outcome.validation.as_json(),  # never the answer
            # The compliance gate's audit: counts by entity type, never a value.
            "redactions": dict(outcome.redactions) or None,
            "prompt_redactions": dict(ctx.prompt_redactions) or None,
            "guardrail_action": outcome.guardrail_action,
            "holdback_chars": outcome.holdback_chars or None,
            "sanitize_policy": _policy_text(ctx) if ctx.policy.on else None,
        }

    def rejected(
        self, reason: str, status: int, code: str | None, request_id: str | None, lambda_id: str | None
    ) -> None:
        """A request refused before admission (or by it): log line and the rejection metric."""
        fields = {
            "request_id": request_id,
            "lambda_request_id": lambda_id,
            "reason": reason,
            "status": status,
            "code": code,
        }
        self.logger.info("request rejected", extra={k: v for k, v in fields.items() if v is not None})
        self.metrics.rejection(reason)


def _as_the_ledger_holds(note: LedgerNote, outcome: StreamOutcome) -> dict[str, Any]:
    """The log line's fields for a request the relay did not settle: what the ledger holds, beside how its stream
    ended (`stream_reason`)."""
    fields: dict[str, Any] = {"settlement": note.state, "stream_reason": outcome.reason.value}
    if note.state == "pending":
        return fields  # the ledger holds nothing yet: the stream's own figures stand, to be written or replaced
    fields["reason"] = note.reason
    record = note.record
    if record is None:  # settled elsewhere, but not read back: no figures of this relay's stand for the ledger's
        fields.update(prompt_tokens=None, completion_tokens=None, usage_source=None, cost_usd=None)
        return fields
    fields.update(
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        usage_source=record.usage_source,
        cost_usd=None if record.cost_usd is None else format(record.cost_usd, "f"),
    )
    return fields
