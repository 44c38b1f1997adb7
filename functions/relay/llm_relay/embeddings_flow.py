"""`POST /v1/embeddings` through the same pipeline as a chat completion (docs/design.md, "One pipeline per
request"): authenticate → parse → route → prompt gate → admit → call the upstream → finalize, answered as one JSON
body.

Nothing is streamed, but the call is cancellable (a disconnect, the cancel call by relay or client id) and bounded
by the deadline, like the open of a stream. Limits, budgets and the ledger see an embeddings request as a
prompt-only chat request (`admission_request`): its inputs are the prompt, and one output token is reserved (the
least a chat request may ask); settlement counts what the upstream reports (`prompt_tokens`) and nothing else.
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .attribution import attribution_of, tags_header
from .chat_request import ChatRequest
from .embeddings_request import EmbeddingsRequest, estimate_input_tokens, parse_embeddings_request
from .errors import InvalidRequest, ModelNotAllowed
from .leases import no_checkpoint
from .metering import StreamMeter, Usage
from .outcome import Ending, RequestContext, StreamOutcome, outcome_of
from .pipeline import Pipeline, as_relay_error, cancel_source, read_body
from .sanitize.policy import KeyPolicy, Policy
from .termination import TerminationReason, reason_for
from .upstreams.http import Progress

# A token list has no text to measure: each id stands in the admission request as four ASCII bytes, which both
# estimators count as at least one token (chars / 4, and bytes / 3 rounded up).
_TOKEN_STAND_IN = "tok "  # noqa: S105 - not a password: a stand-in for one token id


def admission_request(request: EmbeddingsRequest) -> ChatRequest:
    """The chat form limits, budgets and the ledger read: one user message per input, one output token."""
    contents = [
        item if isinstance(item, str) else _TOKEN_STAND_IN * len(item) or _TOKEN_STAND_IN for item in request.items
    ]
    messages: list[Any] = [{"role": "user", "content": content} for content in contents]
    return ChatRequest.model_validate({"model": request.model, "messages": messages, "max_tokens": 1})


def with_texts(request: EmbeddingsRequest, chat: ChatRequest) -> EmbeddingsRequest:
    """The request with its text inputs as the prompt gate left them (redacted, or rewritten by the guardrail)."""
    new = [str(message.content) for message in chat.messages]
    if new == list(request.items):
        return request
    single = isinstance(request.input, str)
    return replace(request, input=new[0] if single else tuple(new), items=tuple(new))


async def relay_embeddings(pipeline: Pipeline, request: Request) -> Response:
    """One embeddings request, answered in OpenAI's shape (or as the upstream's error, or the relay's)."""
    key = await pipeline.authenticate(request)
    settings = pipeline.settings
    body = await read_body(request, settings.max_body_bytes)
    embed = parse_embeddings_request(body, allowed_models=settings.allowed_model_set)
    if not key.allows_model(embed.model):
        raise ModelNotAllowed(f"This key may not use the model '{embed.model}'.", param="model")
    assert pipeline.upstreams is not None
    route = pipeline.upstreams.embeddings_route(embed)  # a kind without embeddings: 400 before anything is counted
    attribution = attribution_of(embed.user, embed.metadata, tags_header(request.headers))
    chat, embed, prompt_redactions, policy = await _gated(pipeline, key.sanitize, embed)
    ctx = pipeline.context(
        request,
        key,
        chat,
        mode="json",
        api="embeddings",
        policy=policy,
        prompt_redactions=prompt_redactions,
        attribution=attribution,
        billed_as=(route.model if pipeline.priced(route.model) else embed.model,),
    )
    return await _admitted(pipeline, ctx, embed, request)


async def _gated(
    pipeline: Pipeline, sanitize: KeyPolicy | None, embed: EmbeddingsRequest
) -> tuple[ChatRequest, EmbeddingsRequest, dict[str, int], Policy]:
    """The compliance gate's prompt side over the inputs: redacted (and sent so), or refused, before admission."""
    policy = pipeline.policy_for(sanitize)
    chat = admission_request(embed)
    gated = policy.prompt.on or pipeline.guardrail is not None
    if gated and embed.tokens:
        raise InvalidRequest(
            "Token-id input cannot be checked by this relay's compliance gate; send the text instead.", param="input"
        )
    chat, found = await pipeline.gate_prompt(chat, policy)
    if found:
        embed = with_texts(embed, chat)
    return chat, embed, found, policy


async def _admitted(pipeline: Pipeline, ctx: RequestContext, embed: EmbeddingsRequest, request: Request) -> Response:
    """Admit, call the upstream (cancellable, within the deadline), finalize, answer."""
    ctx, cancel = await pipeline.admit_cancellable(ctx)
    pipeline.leases.track(ctx.request_id, no_checkpoint, since=ctx.started_epoch)
    assert pipeline.upstreams is not None
    progress = Progress()
    call = functools.partial(pipeline.upstreams.embed, embed, ctx.request_id, progress)
    gone = anyio.Event()
    try:
        result = await pipeline.bounded(ctx, call, cancel, request.receive, gone)
    except BaseException as exc:
        failure = as_relay_error(exc, ctx.request_id)
        ending = Ending(reason_for(failure), failure.message, *cancel_source(failure, cancel, gone))
        # A 2xx answer the relay could not use, or stopped reading (a cancel, the deadline): the provider billed it.
        usage = _estimated(embed) if progress.answered else None
        await _finalize(pipeline, ctx, ending, progress, usage, progress.upstream, "")
        if not isinstance(exc, Exception):  # cancelled (the server is shutting down): finalized, passed on
            raise
        failure.headers.update(ctx.ticket.headers if ctx.ticket else {})
        if failure is exc:
            raise
        raise failure from exc
    counted = result.prompt_tokens
    usage = _estimated(embed) if counted is None else Usage(counted, 0)
    outcome = await _finalize(
        pipeline, ctx, Ending(TerminationReason.STOP), progress, usage, result.upstream, result.billed_as
    )
    headers = dict(ctx.ticket.headers if ctx.ticket else {})
    if outcome.cost_usd is not None:
        headers["x-relay-cost-usd"] = format(outcome.cost_usd, "f")
    tokens = usage.prompt_tokens  # what the record bills: the upstream's count, else the relay's estimate
    return JSONResponse({**result.body, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers=headers)


def _estimated(embed: EmbeddingsRequest) -> Usage:
    """The inputs' tokens as the relay estimates them, when the upstream gave no count of what it billed."""
    return Usage(estimate_input_tokens(embed), 0, estimated=True)


async def _finalize(
    pipeline: Pipeline,
    ctx: RequestContext,
    ending: Ending,
    progress: Progress,
    usage: Usage | None,
    upstream: str,
    billed_as: str,
) -> StreamOutcome:
    """The request's one finalization. `usage` None: no answer came, so nothing was billed."""
    outcome = outcome_of(
        ctx,
        ending,
        StreamMeter(started_at=ctx.started_at),
        ended_at=time.monotonic(),
        answered=usage is not None,
        pricer=pipeline.pricer,
        retries=progress.retries,
        upstream_errors=dict(progress.failures),
        attempts_maybe_billed=progress.maybe_billed,
        upstream=upstream,
        billed_as=billed_as,
    )
    if usage is not None:
        priced_as = billed_as or (ctx.billed_as[0] if ctx.billed_as else ctx.chat.model)
        cost = pipeline.pricer(priced_as, usage)
        outcome = replace(outcome, usage=usage, cost_usd=cost)
    if ending.reason is TerminationReason.STOP:
        outcome = replace(outcome, finish_reason="stop")
    with anyio.CancelScope(shield=True):
        await pipeline.finalize(ctx, outcome)
    return outcome
