"""Usage records (pure values): one per request (streamed, cancelled, failed, or refused by a limit after
authentication), and the totals `llm-relay usage` prints. Their DynamoDB item is laid out in
`llm_relay.dynamo.layout`; `cost_usd` None means the model has no price (cost unknown).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .attribution import NO_ATTRIBUTION, Attribution
from .durations import millis_decimal
from .outcome import RequestContext, StreamOutcome
from .sanitize.policy import POLICY_VERSION
from .validation import Verdict

SECONDS_PER_DAY = 86400


def iso_ms(epoch_s: float) -> str:
    """UTC timestamp with milliseconds, sortable as text: `2025-01-02T03:04:05.123Z`."""
    whole, ms = divmod(round(epoch_s * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


@dataclass(frozen=True, slots=True)
class UsageRecord:
    key_id: str
    request_id: str
    model: str
    started_epoch: float
    termination_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usage_source: str = "upstream"  # "upstream", "estimated", "lower_bound", or "none" (refused: nothing went upstream)
    cost_usd: Decimal | None = None
    ttft_ms: Decimal | None = None
    duration_ms: Decimal | None = None
    mode: str = ""
    cancel_source: str | None = None
    upstream: str | None = None  # the name of the upstream that answered (or failed last); None: none was tried
    # Failed upstream attempts that may have reached a model (a 408, a 504, no answer after the request was sent):
    # the provider may have billed them; the record's cost cannot say what for.
    attempts_maybe_billed: int = 0
    # The compliance gate's audit trail, never the values: entity type -> count, in the answer and in the prompt;
    # the strongest guardrail action; the version of the sanitizer's rules (None: the gate was off).
    redactions: dict[str, int] = field(default_factory=dict)
    prompt_redactions: dict[str, int] = field(default_factory=dict)
    guardrail_action: str | None = None
    policy_version: int | None = None
    validation: Verdict | None = None  # the assembled answer's check (None: nothing was asked to be checked)
    # Whom the spend is for beyond the key (`attribution.py`): the caller's end user and tags. Stored and read back
    # here only: never a metric dimension or a per-request log field (their cardinality is the client's to choose).
    attribution: Attribution = NO_ATTRIBUTION
    api: str = "chat"  # the API the client spoke: "chat", "responses", "messages" or "embeddings"
    repeated_events: int = 0  # upstream events dropped as resent (`upstreams.sequence`)

    @property
    def timestamp(self) -> str:
        return iso_ms(self.started_epoch)

    @property
    def day(self) -> str:
        return self.timestamp[:10]

    def as_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "key_id": self.key_id,
            "request_id": self.request_id,
            "model": self.model,
            "termination_reason": self.termination_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "usage_source": self.usage_source,
            "cost_usd": None if self.cost_usd is None else format(self.cost_usd, "f"),
            "ttft_ms": None if self.ttft_ms is None else float(self.ttft_ms),
            "duration_ms": None if self.duration_ms is None else float(self.duration_ms),
            "mode": self.mode,
            "api": self.api,
            "repeated_events": self.repeated_events,
            "cancel_source": self.cancel_source,
            "upstream": self.upstream,
            "attempts_maybe_billed": self.attempts_maybe_billed,
            "redactions": dict(self.redactions),
            "prompt_redactions": dict(self.prompt_redactions),
            "guardrail_action": self.guardrail_action,
            "policy_version": self.policy_version,
            "validation": None if self.validation is None else self.validation.as_json(),
            "user": self.attribution.user,
            "tags": dict(self.attribution.tags),
        }


def record_for(ctx: RequestContext, outcome: StreamOutcome) -> UsageRecord:
    """The record of an admitted request, whatever ended it."""
    usage = outcome.usage
    return UsageRecord(
        key_id=ctx.key.key_id,
        request_id=ctx.request_id,
        model=ctx.chat.model,
        started_epoch=ctx.started_epoch,
        termination_reason=outcome.reason.value,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        usage_source=usage.source,
        cost_usd=outcome.cost_usd,
        ttft_ms=millis_decimal(outcome.ttft_s),
        duration_ms=millis_decimal(outcome.duration_s),
        mode=ctx.mode,
        cancel_source=outcome.cancel_source,
        upstream=outcome.upstream or None,
        attempts_maybe_billed=outcome.attempts_maybe_billed,
        redactions=dict(outcome.redactions),
        prompt_redactions=dict(ctx.prompt_redactions),
        guardrail_action=outcome.guardrail_action,
        policy_version=POLICY_VERSION if ctx.policy.on else None,
        validation=outcome.validation,
        attribution=ctx.attribution,
        api=ctx.api,
        repeated_events=outcome.repeated_events,
    )


def refused_record(ctx: RequestContext, reason: str, duration_s: float) -> UsageRecord:
    """The record of a request refused by a limit after authentication: no tokens, no cost."""
    return UsageRecord(
        key_id=ctx.key.key_id,
        request_id=ctx.request_id,
        model=ctx.chat.model,
        started_epoch=ctx.started_epoch,
        termination_reason=reason,
        usage_source="none",
        cost_usd=Decimal(0),
        duration_ms=millis_decimal(duration_s),
        mode=ctx.mode,
        attribution=ctx.attribution,
        api=ctx.api,
    )


@dataclass(slots=True)
class UsageTotals:
    """Sums over usage records, for `llm-relay usage`."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_requests: int = 0
    unpriced_requests: int = 0
    cost_usd: Decimal = Decimal(0)
    reasons: Counter[str] = field(default_factory=Counter)
    redactions: Counter[str] = field(default_factory=Counter)  # output and prompt together, by entity type

    def add(self, record: UsageRecord) -> None:
        self.redactions.update(record.redactions)
        self.redactions.update(record.prompt_redactions)
        self.requests += 1
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        self.estimated_requests += record.usage_source in ("estimated", "lower_bound")
        if record.cost_usd is None:
            self.unpriced_requests += 1
        else:
            self.cost_usd += record.cost_usd
        self.reasons[record.termination_reason] += 1

    @classmethod
    def of(cls, records: list[UsageRecord]) -> UsageTotals:
        totals = cls()
        for record in records:
            totals.add(record)
        return totals

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "estimated_requests": self.estimated_requests,
            "unpriced_requests": self.unpriced_requests,
            "cost_usd": format(self.cost_usd, "f"),
            "termination_reasons": dict(sorted(self.reasons.items())),
            "redactions": dict(sorted(self.redactions.items())),
        }
