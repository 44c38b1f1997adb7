"""What one request is (`RequestContext`) and what it produced (`StreamOutcome`, built in one place,
`outcome_of`), handed to every finalizer (usage records and limits, metrics, logs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from .attribution import NO_ATTRIBUTION, Attribution
from .chat_request import ChatRequest
from .keys import ApiKey
from .limits.budgets import Reservation, conservative_prompt_tokens
from .metering import StreamMeter, Usage, estimate_prompt_tokens
from .pricing import Pricer
from .sanitize.policy import OFF, Policy
from .termination import TerminationReason
from .validation import Verdict


@dataclass(frozen=True, slots=True)
class Prompt:
    """A request's prompt as the relay counts it, computed once when the request is parsed: its messages as dicts,
    the meter's estimate of its tokens (what a usage without the upstream's count bills), and the upper estimate a
    budget reserves for (`limits.budgets.conservative_prompt_tokens`)."""

    messages: list[dict[str, Any]]
    estimate: int
    upper: int

    @classmethod
    def of(cls, chat: ChatRequest) -> Prompt:
        messages = chat.messages_as_dicts()
        return cls(messages, estimate_prompt_tokens(messages), conservative_prompt_tokens(messages))


@dataclass(frozen=True, slots=True)
class Ticket:
    """What admission granted one request (`limits.Admission.admit`); the request carries it to finalization,
    which gives back or settles what it says was taken."""

    headers: Mapping[str, str] = field(default_factory=dict)  # x-ratelimit-* for the response
    minute: int | None = None  # the rate window the request was counted in
    reserve: int = 0  # tokens reserved against the tokens-per-minute limit
    lease: str | None = None  # the concurrency lease to release (None: no concurrency limit)
    settle_tokens: bool = False  # whether the token reservation is settled against actual usage
    budget: Reservation | None = None  # the budget reservation (None: no budget, or an unpriced model allowed)
    shard: int = 0  # the key's shard the rate and concurrency parts were taken from (0: the key's own items)


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    key: ApiKey
    chat: ChatRequest
    prompt: Prompt  # the chat's prompt, counted once (`Prompt.of`)
    mode: str  # "sse", "ndjson" or "json"
    started_at: float  # monotonic
    started_epoch: float
    deadline: float | None = None  # monotonic time by which the response must have ended
    lambda_request_id: str | None = None  # from the web adapter's x-amzn-lambda-context, for log correlation
    ticket: Ticket | None = None  # what admission granted; None before admission (or for a test's own context)
    client_request_id: str | None = None  # X-Client-Request-Id: the client's own name for the request
    # The names the request may be billed under, one per route that may answer it (`upstreams.router.Plan`): the
    # model each route sends, where it has a price, else the client's. Empty: the client's model.
    billed_as: tuple[str, ...] = ()
    policy: Policy = OFF  # the sanitizer policy in force for this request (the key's, floored by the deployment's)
    prompt_redactions: Mapping[str, int] = field(default_factory=dict)  # entity type -> values redacted in the prompt
    attribution: Attribution = NO_ATTRIBUTION  # end user and tags: on the usage record, never a metric or log field
    api: str = "chat"  # the API the client spoke (`apis`): "chat", "responses", "messages" or "embeddings"


@dataclass(frozen=True, slots=True)
class Ending:
    """How a request ended, as the first party to end it named it."""

    reason: TerminationReason
    error: str | None = None
    cancel_source: str | None = None  # "disconnect" or "cancel_call"
    cancel_started: float | None = None  # monotonic: when the cancel was asked for
    code: str | None = None  # the terminal error's code where it is not the reason's (a sanitizer block)


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    reason: TerminationReason
    usage: Usage
    ttft_s: float | None
    tpot_s: float | None
    duration_s: float
    chunks: int
    error: str | None = None
    cancel_source: str | None = None
    cancel_latency_s: float | None = None
    cost_usd: Decimal | None = None  # None: the model has no price
    finish_reason: str | None = None  # the upstream's own, as it sent it
    retries: int = 0  # upstream attempts after the first
    upstream_errors: dict[str, int] = field(default_factory=dict)  # failed attempts by class ("5xx", "connect")
    attempts_maybe_billed: int = 0  # failed attempts that may have reached a model (408, 504, no answer): not in cost
    upstream: str = ""  # the upstream that answered (or failed last); "" when none was tried
    redactions: Mapping[str, int] = field(default_factory=dict)  # entity type -> values the output sanitizer caught
    guardrail_action: str | None = None  # the strongest Bedrock guardrail action on the output (None: no guardrail)
    error_code: str | None = None  # the terminal error's own code, where it is not the reason's (`content_filtered`)
    holdback_chars: int = 0  # the most characters the sanitizer held back at once
    blocked: tuple[str, ...] = ()  # the types that made the compliance gate end the stream (never values)
    validation: Verdict | None = None  # the assembled answer's check (None: nothing was asked to be checked)
    repeated_events: int = 0  # upstream events dropped as resent (a repeated SSE id or sequence number)

    @property
    def is_error(self) -> bool:
        """Whether the stream ends with a terminal error object instead of a normal end."""
        return self.reason.is_failure or self.error_code is not None


def outcome_of(
    ctx: RequestContext,
    ending: Ending,
    meter: StreamMeter,
    *,
    ended_at: float,
    answered: bool,
    pricer: Pricer,
    retries: int = 0,
    upstream_errors: dict[str, int] | None = None,
    attempts_maybe_billed: int = 0,
    upstream: str = "",
    billed_as: str = "",
    redactions: Mapping[str, int] | None = None,
    guardrail_action: str | None = None,
    holdback_chars: int = 0,
    blocked: tuple[str, ...] = (),
    validation: Verdict | None = None,
    repeated_events: int = 0,
) -> StreamOutcome:
    """The outcome of a request, whatever ended it: a stream (its meter), or an upstream that never answered
    2xx (`answered` False, an empty meter). Its cost is the price of `billed_as` (the model of the route that
    answered; the client's model when empty)."""
    usage = meter.usage(ctx.prompt.estimate)
    priced = pricer(billed_as or ctx.chat.model, usage)
    return StreamOutcome(
        reason=ending.reason,
        usage=usage,
        ttft_s=meter.ttft_s,
        tpot_s=meter.tpot_s,
        duration_s=ended_at - ctx.started_at,
        chunks=meter.chunks,
        error=ending.error,
        cancel_source=ending.cancel_source,
        cancel_latency_s=None if ending.cancel_started is None else ended_at - ending.cancel_started,
        cost_usd=billed_cost(priced, ending.reason, answered=answered, chunks=meter.chunks),
        finish_reason=meter.finish_reason,
        retries=retries,
        upstream_errors=dict(upstream_errors or {}),
        attempts_maybe_billed=attempts_maybe_billed,
        upstream=upstream,
        redactions=dict(redactions or {}),
        guardrail_action=guardrail_action,
        error_code=ending.code,
        holdback_chars=holdback_chars,
        blocked=blocked,
        validation=validation,
        repeated_events=repeated_events,
    )


def billed_cost(priced: Decimal | None, reason: TerminationReason, *, answered: bool, chunks: int) -> Decimal | None:
    """What the provider bills. An upstream that never answered 2xx, or answered and then failed before its
    first chunk for a model without a price, billed nothing: 0, not "unknown"."""
    if not answered or (priced is None and chunks == 0 and reason.is_failure):
        return Decimal(0)
    return priced


class Finalizer(Protocol):
    """Runs once per admitted request, before the response body closes; must not raise."""

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None: ...
