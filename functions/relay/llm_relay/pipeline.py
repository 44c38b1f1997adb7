"""One request, one pipeline (docs/design.md, "One pipeline per request"): authenticate → parse → admit → open the
upstream → stream → finalize.

Read `Pipeline.chat` top to bottom. Errors before admission are raised to the app's exception handlers and
cost nothing. From admission on the request is finalized exactly once, by `finalize`, whatever ends it: the
stream's own end (`RelayStream` calls it before the response body closes), or an upstream open that failed,
was cancelled or ran out of time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from . import client_request_id
from .apis.base import Api
from .apis.chat import ChatApi
from .attribution import Attribution, attribution_of, tags_header
from .auth import Authenticator
from .cancel_signal import CancelSignal
from .cancellation import CancelRegistry
from .chat_request import ChatRequest
from .durations import server_timing
from .dynamo import RequestStore
from .errors import (
    InvalidRequest,
    ModelNotAllowed,
    NotFound,
    PayloadTooLarge,
    PromptRefused,
    RelayError,
    RequestCancelled,
    ServiceUnavailable,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from .keys import ApiKey
from .lambda_context import LambdaInvocation
from .leases import Leases, no_checkpoint
from .ledger import checkpoint
from .limits import Admission, Ticket
from .metering import StreamMeter, Usage
from .outcome import Ending, Finalizer, Prompt, RequestContext, StreamOutcome, outcome_of
from .pricing import Pricer
from .sanitize.policy import KeyPolicy, Policy
from .settings import Settings
from .stream import RelayStream
from .termination import TerminationReason, reason_for
from .upstreams.http import OpenedStream, Progress
from .upstreams.router import Plan, Upstreams
from .validation import expectation_of

if TYPE_CHECKING:
    from .sanitize.gate import OutputGate
    from .sanitize.guardrail import Guardrail

logger = logging.getLogger(__name__)
T = TypeVar("T")
# What a relayed response's Server-Timing header times, in order, until the provider's response headers: the key's
# authentication; reading, validating and gating the body and routing it; admission (limits, budgets, the ledger's
# record); the upstream's answer to the request (its headers, retries and fallbacks included).
PHASES = ("auth", "parse", "admit", "upstream")


class Pipeline:
    """The relay's request handling, built once by `create_app` from its parts."""

    def __init__(
        self,
        settings: Settings,
        *,
        requests: RequestStore,
        auth: Authenticator,
        admission: Admission,
        cancels: CancelRegistry,
        finalizer: Finalizer,
        pricer: Pricer,
        upstreams: Upstreams,
        leases: Leases,
        guardrail: Guardrail | None = None,
    ) -> None:
        self.settings = settings
        self._requests = requests
        self._auth = auth
        self._admission = admission
        self.cancels = cancels
        self._finalizer = finalizer
        self.pricer = pricer
        self.leases = leases
        self._policy = settings.sanitize_policy  # the deployment's: the floor of every key's
        self.guardrail = guardrail  # the deployment's Bedrock guardrail, on every prompt and answer (None: none)
        if self._policy.on:  # at start-up (more CPU than a request gets on Lambda), not on the first request
            from .sanitize.chunks import warm

            warm(self._policy.entities, settings.sanitize_phone_region)
        self.upstreams = upstreams  # connected by the app's lifespan

    async def chat(self, request: Request, *, ndjson: bool) -> Response:
        """A chat completion, answered as SSE, NDJSON or one JSON body."""
        return await self.relay(request, ChatApi(ndjson=ndjson))

    async def relay(self, request: Request, api: Api) -> Response:
        """A request in one of the APIs the relay speaks (`apis`), relayed as a chat completion and answered in the
        API's own shape: its stream of events, or one JSON body."""
        marks = [time.monotonic()]  # the end of each phase until the provider answered, for Server-Timing
        key = await self._auth.authenticate(request.headers)
        marks.append(time.monotonic())
        ctx = await self._parse(request, key, api)
        plan = await self._plan(ctx)
        ctx = replace(ctx, billed_as=plan.billed_as)  # what admission reserves for: every model that may answer
        marks.append(time.monotonic())
        ctx, cancel = await self.admit_cancellable(ctx)
        marks.append(time.monotonic())
        # renewed from admission on (no progress before the stream); held at most as long as admission made it
        lease = self.leases.track(ctx.request_id, no_checkpoint, since=ctx.started_epoch)
        opened = await self._open_upstream(ctx, plan, cancel, request.receive)
        marks.append(time.monotonic())
        timing = server_timing(zip(PHASES, map(operator.sub, marks[1:], marks), strict=True))
        streamed = ctx.mode != "json"
        framing = api.framing(ctx.request_id, ctx.chat.model, int(ctx.started_epoch)) if streamed else None
        try:
            stream = RelayStream(
                ctx,
                opened,
                framing=framing,
                api=api,
                cancel=cancel,
                on_end=functools.partial(self.finalize, ctx),
                pricer=self.pricer,
                settings=self.settings,
                budget=self._admission.budget_guard(ctx),
                gate=self._output_gate(ctx),
                lease=lease,
                timing=timing,
            )
        except BaseException:  # the stream that would have finalized it never started: finalize it here
            await self._abandon(ctx, opened)
            raise
        estimate = ctx.prompt.estimate
        self.leases.track(
            ctx.request_id,
            lambda: checkpoint(stream.meter, estimate, time.time(), opened.upstream, opened.billed_as),
        )
        return stream

    async def _abandon(self, ctx: RequestContext, opened: OpenedStream) -> None:
        """An open upstream whose stream could not be built: closed, and the request finalized (a failure)."""
        logger.error("the stream of %s could not start", ctx.request_id, exc_info=True)
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await opened.response.aclose()
            ending = Ending(TerminationReason.UPSTREAM_ERROR, "The relay failed before streaming.")
            await self._finalize_unstreamed(ctx, ending, answered=True, upstream=opened.upstream)

    async def _finalize_unstreamed(
        self,
        ctx: RequestContext,
        ending: Ending,
        *,
        answered: bool,
        retries: int = 0,
        upstream_errors: dict[str, int] | None = None,
        upstream: str = "",
        attempts_maybe_billed: int = 0,
    ) -> None:
        """Finalize a request that ended before any chunk was relayed (an empty meter)."""
        meter = StreamMeter(started_at=ctx.started_at)
        outcome = outcome_of(
            ctx,
            ending,
            meter,
            ended_at=time.monotonic(),
            answered=answered,
            pricer=self.pricer,
            retries=retries,
            upstream_errors=upstream_errors,
            attempts_maybe_billed=attempts_maybe_billed,
            upstream=upstream,
        )
        await self.finalize(ctx, outcome)

    def policy_for(self, key_policy: KeyPolicy | None) -> Policy:
        """The compliance gate's policy for a key: its own, floored by the deployment's."""
        return self._policy.for_key(key_policy)

    def priced(self, model: str) -> bool:
        return self.pricer(model, Usage(0, 0)) is not None

    async def embeddings(self, request: Request) -> Response:
        """Embeddings (`embeddings_flow`), through the same authentication, limits, ledger, cancel and deadline."""
        from .embeddings_flow import relay_embeddings

        return await relay_embeddings(self, request)

    async def authenticate(self, request: Request) -> ApiKey:
        """The caller's key (401 otherwise), for routes that need no more of the pipeline (`/v1/models`)."""
        return await self._auth.authenticate(request.headers)

    async def cancel(self, request: Request, request_id: str) -> dict[str, str]:
        """The explicit cancel: mark the request in DynamoDB (any instance may run it), stop it here at once
        if it runs in this process. `request_id` is the relay's id or the caller's own X-Client-Request-Id."""
        key = await self._auth.authenticate(request.headers)
        self.cancels.calls.take(key)  # each call writes to DynamoDB: past the key's allowance, 429 and no write
        if not client_request_id.is_relay_id(request_id):
            return await self._cancel_client_id(key, client_request_id.validate(request_id))
        try:
            item = await anyio.to_thread.run_sync(self._requests.request_cancel, request_id, key.key_id)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("The request store is unavailable; try again shortly.") from exc
        if item is None:
            raise NotFound(f"No request '{request_id}' for this key.")
        self.cancels.cancel_local(request_id)
        status = "finished" if "finished_at" in item else "cancelling"
        return {"id": request_id, "object": "relay.cancel", "status": status}

    async def _cancel_client_id(self, key: ApiKey, client_id: str) -> dict[str, str]:
        """A cancel by client id: its request may be running anywhere, or not have arrived yet, so the mark is
        written either way (and kept a few minutes); "pending" unless this process runs the request."""
        try:
            await anyio.to_thread.run_sync(self._requests.cancel_client_request, key.key_id, client_id)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("The request store is unavailable; try again shortly.") from exc
        running_here = self.cancels.cancel_local_client(key.key_id, client_id)
        return {"id": client_id, "object": "relay.cancel", "status": "cancelling" if running_here else "pending"}

    # --- the steps ---------------------------------------------------------------------------------------
    async def _parse(self, request: Request, key: ApiKey, api: Api) -> RequestContext:
        settings = self.settings
        chat = api.parse(
            await read_body(request, settings.max_body_bytes),
            max_tokens_cap=settings.max_tokens_cap,
            allowed_models=settings.allowed_model_set,
        )
        if not key.allows_model(chat.model):
            raise ModelNotAllowed(f"This key may not use the model '{chat.model}'.", param="model")
        attribution = attribution_of(chat.user, chat.metadata, tags_header(request.headers))  # before any cost
        policy = self.policy_for(key.sanitize)
        chat, prompt_redactions = await self.gate_prompt(chat, policy)
        return self.context(
            request,
            key,
            chat,
            mode="ndjson" if isinstance(api, ChatApi) and api.ndjson else ("sse" if chat.stream else "json"),
            api=api.name,
            policy=policy,
            prompt_redactions=prompt_redactions,
            attribution=attribution,
        )

    def context(
        self,
        request: Request,
        key: ApiKey,
        chat: ChatRequest,
        *,
        mode: str,
        api: str,
        policy: Policy,
        prompt_redactions: dict[str, int],
        attribution: Attribution,
        billed_as: tuple[str, ...] = (),
    ) -> RequestContext:
        """The request's context, its clock started now: its deadline from the Lambda invocation it runs in."""
        settings = self.settings
        invocation: LambdaInvocation = request.state.lambda_invocation
        now, now_epoch = time.monotonic(), time.time()
        return RequestContext(
            request_id=request.state.request_id,
            key=key,
            chat=chat,
            prompt=Prompt.of(chat),
            mode=mode,
            api=api,
            started_at=now,
            started_epoch=now_epoch,
            deadline=invocation.deadline(
                now_epoch=now_epoch,
                now_monotonic=now,
                timeout_s=settings.function_timeout_s,
                margin_s=settings.deadline_margin_s,
            ),
            lambda_request_id=invocation.request_id,
            client_request_id=client_request_id.from_headers(request.headers),
            billed_as=billed_as,
            policy=policy,
            prompt_redactions=prompt_redactions,
            attribution=attribution,
        )

    async def gate_prompt(self, chat: ChatRequest, policy: Policy) -> tuple[ChatRequest, dict[str, int]]:
        """The compliance gate's prompt side (the sanitizer, then the guardrail): the prompt as it may be sent, and
        what was found in it by kind."""
        found: dict[str, int] = {}
        if policy.prompt.on:
            chat, found = self.sanitized_prompt(chat, policy)
        if self.guardrail is not None:
            chat, findings = await self.guarded_prompt(self.guardrail, chat)
            found.update(findings)
        return chat, found

    def sanitized_prompt(self, chat: ChatRequest, policy: Policy) -> tuple[ChatRequest, dict[str, int]]:
        """The prompt side of the compliance gate, before anything is admitted or sent (a refusal costs nothing).
        Imported here: a relay whose policy is off never loads the recognizers."""
        from .sanitize.chunks import detector_for
        from .sanitize.prompt import sanitize_prompt

        detector = detector_for(policy.prompt.entities, self.settings.sanitize_phone_region)
        chat, found = sanitize_prompt(chat, policy.prompt, detector, policy.placeholder)
        return chat, dict(found)

    async def guarded_prompt(self, guardrail: Guardrail, chat: ChatRequest) -> tuple[ChatRequest, dict[str, int]]:
        """The guardrail's judgement of the prompt, before admission: blocked, a 400 `prompt_blocked` naming the kinds
        it found; anonymized, the prompt as the guardrail rewrote it; unavailable, its failure policy."""
        from .sanitize.prompt import prompt_texts, with_prompt_texts

        assessment = await guardrail.judge_prompt(prompt_texts(chat))
        if assessment is None:  # unavailable, failing open: sent unassessed, and the record says so
            return chat, {"guardrail:unavailable": 1}
        findings = {f"guardrail:{kind}": count for kind, count in assessment.findings.items()}
        if assessment.action == "BLOCKED":
            kinds = ", ".join(sorted(assessment.findings)) or "unspecified"
            message = f"The prompt was refused by the content guardrail ({kinds}); the request was not sent."
            raise PromptRefused(message, code="prompt_blocked", param="messages")
        if assessment.action == "ANONYMIZED":
            chat = with_prompt_texts(chat, list(assessment.texts))
        return chat, findings

    def _output_gate(self, ctx: RequestContext) -> OutputGate | None:
        """The output side of the compliance gate for one stream: the sanitizer when the policy turns it on, the
        guardrail when one is configured; None when neither is."""
        side = ctx.policy.output
        if not side.on and self.guardrail is None:
            return None
        from .sanitize.chunks import ChunkSanitizer, detector_for
        from .sanitize.gate import OutputGate

        sanitizer = None
        if side.on:
            detector = detector_for(side.entities, self.settings.sanitize_phone_region)
            sanitizer = ChunkSanitizer(detector, side.mode, ctx.policy.placeholder)
        guard = self.guardrail.output_stage() if self.guardrail is not None else None
        return OutputGate(sanitizer, guard)

    async def _plan(self, ctx: RequestContext) -> Plan:
        """Where the request goes (the upstream table), its first request built: refusals here cost nothing."""
        gated = ctx.policy.on or self.guardrail is not None  # the gate must see (and may change) every text first
        # An enforced check must be free to replace the end: the provider's own terminal event would have gone out.
        enforced = self.settings.output_validation == "enforce" and expectation_of(ctx.chat) is not None
        native = None if gated or enforced else ctx.chat.native
        return await self.upstreams.plan(ctx.chat.upstream_body(), ctx.chat.model, ctx.request_id, native)

    async def admit_cancellable(self, ctx: RequestContext) -> tuple[RequestContext, CancelSignal]:
        """Admission of a request registered for cancels (by relay id, and by the client's id) from now on; a refused
        one is unregistered."""
        client = (ctx.key.key_id, ctx.client_request_id) if ctx.client_request_id else None
        cancel = self.cancels.register(ctx.request_id, client)
        try:
            return await self.admit(ctx, cancel), cancel
        except BaseException:
            self.cancels.unregister(ctx.request_id)
            raise

    async def admit(self, ctx: RequestContext, cancel: CancelSignal) -> RequestContext:
        """Admission, and beside it (same time, no added latency) the one read of a cancel that may have come
        for the client's id before the request did; only requests with an X-Client-Request-Id pay for it."""
        if ctx.client_request_id is None:
            return replace(ctx, ticket=await self._admission.admit(ctx))
        ticket: Ticket | None = None
        refusal: Exception | None = None  # raised after the task group, which would wrap it in an ExceptionGroup
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._check_early_cancel, ctx.key.key_id, ctx.client_request_id, cancel)
            try:
                ticket = await self._admission.admit(ctx)
            except Exception as exc:
                refusal = exc
                tg.cancel_scope.cancel()
        if refusal is not None:
            raise refusal
        return replace(ctx, ticket=ticket)

    async def _check_early_cancel(self, key_id: str, client_id: str, cancel: CancelSignal) -> None:
        try:
            read = self._requests.client_cancel_requested  # abandoned with the admission (a refusal ends it)
            if await anyio.to_thread.run_sync(read, key_id, client_id, abandon_on_cancel=True):
                cancel.set(time.monotonic())
        except StoreUnavailable as exc:  # the poller reads the mark again while the upstream opens
            logger.warning("reading the early cancel of a request failed: %s", exc)

    async def _open_upstream(
        self, ctx: RequestContext, plan: Plan, cancel: CancelSignal, receive: Receive
    ) -> OpenedStream:
        """Open the upstream stream (with its retries, and its fallbacks)."""
        call = functools.partial(self.upstreams.open, plan)
        return await self.call_upstream(ctx, call, cancel, receive, plan.progress, plan.upstream)

    async def call_upstream(
        self,
        ctx: RequestContext,
        call: Callable[[], Awaitable[T]],
        cancel: CancelSignal,
        receive: Receive,
        progress: Progress,
        upstream: str = "",
    ) -> T:
        """An admitted request's upstream call (the open of a stream, an embeddings request); one that fails, is
        cancelled or runs out of time is finalized here and answered as an error (with the admission's rate-limit
        headers). `progress` counts every attempt, even of a call that a cancel or the deadline stopped."""
        gone = anyio.Event()
        try:
            return await self.bounded(ctx, call, cancel, receive, gone)
        except BaseException as exc:
            failure = as_relay_error(exc, ctx.request_id)
            ending = Ending(reason_for(failure), failure.message, *cancel_source(failure, cancel, gone))
            await self._finalize_unstreamed(
                ctx,
                ending,
                answered=False,
                retries=progress.retries,
                upstream_errors=dict(progress.failures),
                upstream=progress.upstream or upstream,
                attempts_maybe_billed=progress.maybe_billed,
            )
            if not isinstance(exc, Exception):  # cancelled (the server is shutting down): finalized, passed on
                raise
            failure.headers.update(ctx.ticket.headers if ctx.ticket else {})
            if failure is exc:
                raise
            raise failure from exc

    async def bounded(
        self,
        ctx: RequestContext,
        call: Callable[[], Awaitable[T]],
        cancel: CancelSignal,
        receive: Receive,
        gone: anyio.Event,
    ) -> T:
        """An upstream call (the open of a stream with every retry, an embeddings request), unless the client cancels
        or leaves, or the deadline comes first: no stream's watchers run yet, so this wait is bounded here. A cancel
        that came before (at admission) stops it before the first attempt."""
        opened: T | None = None
        failure: Exception | None = None  # raised after the task group, which would wrap it in an ExceptionGroup
        async with anyio.create_task_group() as tg:

            async def stop_on_cancel() -> None:
                await cancel.event.wait()
                tg.cancel_scope.cancel()

            async def stop_on_disconnect() -> None:
                # The body was read in `_parse`, so the next message is the disconnect, whenever it comes.
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_on_cancel)
            tg.start_soon(stop_on_disconnect)
            with anyio.move_on_after(max(0.0, (ctx.deadline or math.inf) - time.monotonic())):
                await anyio.lowlevel.checkpoint()  # a cancel already set ends the open before any attempt
                try:
                    opened = await call()
                except Exception as exc:
                    failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if opened is not None:
            return opened
        if cancel.is_set or gone.is_set():
            raise RequestCancelled("The request was cancelled before the upstream answered.")
        raise UpstreamTimeout("The relay's time limit was reached before the upstream answered.", code="deadline")

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        """The one end of every admitted request: usage and limits, telemetry; then it can no longer be
        cancelled here. Its lease is no longer renewed: if finalization cannot reach DynamoDB, the reconciler
        settles the request once the lease expires."""
        self.leases.untrack(ctx.request_id)
        try:
            with anyio.CancelScope(shield=True):
                await self._finalizer.finalize(ctx, outcome)
        finally:
            self.cancels.unregister(ctx.request_id)


def cancel_source(failure: RelayError, cancel: CancelSignal, gone: anyio.Event) -> tuple[str | None, float | None]:
    """Which channel cancelled an open (the Ending's cancel source and start), if one did."""
    if not isinstance(failure, RequestCancelled):
        return None, None
    if cancel.is_set:
        return "cancel_call", cancel.requested_at
    return ("disconnect", time.monotonic()) if gone.is_set() else (None, None)


def as_relay_error(exc: BaseException, request_id: str) -> RelayError:
    """What the client is told about a failed open: the upstream's own error, or a 502 for anything else."""
    if isinstance(exc, UpstreamError | RequestCancelled):
        return exc
    if isinstance(exc, Exception):
        logger.error("opening the upstream request failed for %s", request_id, exc_info=exc)
        return UpstreamError(f"Upstream request failed ({type(exc).__name__}).")
    return UpstreamError("The request was interrupted.")


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused (413) as soon as it is known to be over `cap` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {cap}.")
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > cap:
                raise PayloadTooLarge(f"Request body exceeds the limit of {cap} bytes.")
    except ClientDisconnect:
        # The client declared a body and went away before sending it: its mistake, not the relay's.
        logger.info("request %s: the client disconnected before its body was complete", request.state.request_id)
        raise InvalidRequest("The request body ended before it was complete.") from None
    return bytes(body)
