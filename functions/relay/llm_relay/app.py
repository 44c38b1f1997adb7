"""The FastAPI app: routes, the request pipeline (validate, authenticate, admit, upstream, relay) and the
one place where errors become HTTP answers. `create_app()` takes settings and dependencies, so tests and
entry points (run.sh/uvicorn, Mangum, dev server) build the same app."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal

import anyio
import anyio.to_thread
import httpx
from aws_lambda_powertools import Logger
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import Admission
from .auth import Authenticator
from .cancellation import CancelRegistry
from .chat_request import ChatRequest, parse_chat_request
from .dynamo import Stores
from .embedded_mock import embedded_mock_upstream
from .encoding import Framing, NDJSONFraming, SSEFraming
from .errors import (
    InvalidRequest,
    ModelNotAllowed,
    NotFound,
    PayloadTooLarge,
    RelayError,
    RequestCancelled,
    ServiceUnavailable,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from .finalize import Finalizers
from .limiter import Limiter
from .metering import Usage, estimate_prompt_tokens
from .metrics import REJECTION_REASONS, MetricsEmitter
from .outcome import Finalizer, RequestContext, StreamOutcome
from .pricing import PriceTable
from .relay import Pricer, RelayResponse
from .settings import Settings
from .telemetry import Telemetry, lambda_request_id
from .termination import TerminationReason
from .upstream import OpenedStream, Upstream
from .upstream_key import UpstreamKeyProvider

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives every request an id (`scope["state"]["request_id"]`) and every response an `x-request-id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Unexpected errors reach here past the app's handlers: answer them in OpenAI shape, with the id.
            logger.exception("unhandled error in request %s", request_id)
            if started:
                raise
            response = JSONResponse(RelayError("Internal error.").body(), status_code=500)
            await response(scope, receive, send_with_id)


@dataclass
class Services:
    settings: Settings
    stores: Stores
    auth: Authenticator
    cancels: CancelRegistry
    admission: Admission
    finalizer: Finalizer
    pricer: Pricer
    telemetry: Telemetry
    upstream: Upstream | None = None


def _known_models(settings: Settings, prices: PriceTable) -> set[str]:
    """Models that may name a metric dimension: the allow-list and the priced models (bounded sets; a
    free-text model name from a client would make a new CloudWatch metric per value)."""
    return set(settings.allowed_model_set or ()) | set(prices.models)


def create_app(
    settings: Settings | None = None,
    *,
    stores: Stores | None = None,
    admission: Admission | None = None,
    finalizers: list[Finalizer] | None = None,
    pricer: Pricer | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    settings = settings or Settings()
    stores = stores or Stores.from_settings(settings)
    prices = PriceTable.load(settings.prices_json)
    pricer = pricer or prices
    telemetry = Telemetry(
        MetricsEmitter(settings.metrics_namespace, settings.service_name, _known_models(settings, prices)),
        Logger(service=settings.service_name, level=settings.log_level),
    )
    limiter = Limiter(stores, settings, metrics=telemetry.metrics.hook)
    services = Services(
        settings=settings,
        stores=stores,
        auth=Authenticator(stores.keys, settings.auth_cache_ttl_s),
        cancels=CancelRegistry(stores.requests, settings.cancel_poll_interval_s),
        admission=admission or limiter,
        finalizer=Finalizers([limiter, telemetry, *(finalizers or [])]),
        pricer=pricer,
        telemetry=telemetry,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            base_url = settings.upstream_url
            if base_url is None and upstream_transport is None:
                base_url = await stack.enter_async_context(embedded_mock_upstream())
            services.upstream = Upstream(
                settings, base_url or "http://upstream/v1", UpstreamKeyProvider(settings), transport=upstream_transport
            )
            stack.push_async_callback(services.upstream.aclose)
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(services.cancels.run_poller)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    app = FastAPI(title="llm-relay", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.services = services
    _install_error_handlers(app, telemetry)
    _install_routes(app, services)
    app.add_middleware(RequestIdMiddleware)
    return app


def _install_routes(app: FastAPI, services: Services) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _relay(request, services, ndjson=False)

    @app.post("/api/v1/chat/stream")
    async def chat_stream_ndjson(request: Request) -> Response:
        return await _relay(request, services, ndjson=True)

    @app.post("/v1/requests/{request_id}/cancel", status_code=202)
    async def cancel(request_id: str, request: Request) -> JSONResponse:
        key = await services.auth.authenticate(request.headers)
        try:
            item = await anyio.to_thread.run_sync(services.stores.requests.request_cancel, request_id, key.key_id)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("The request store is unavailable; try again shortly.") from exc
        if item is None:
            raise NotFound(f"No request '{request_id}' for this key.")
        services.cancels.cancel_local(request_id)
        status = "finished" if "finished_at" in item else "cancelling"
        return JSONResponse({"id": request_id, "object": "relay.cancel", "status": status}, status_code=202)


async def _relay(request: Request, services: Services, *, ndjson: bool) -> Response:
    """The pipeline: authenticate, validate, admit, open upstream, then hand over to `RelayResponse`."""
    settings = services.settings
    request_id: str = request.state.request_id
    key = await services.auth.authenticate(request.headers)
    chat = parse_chat_request(
        await _read_body(request, settings.max_body_bytes),
        max_tokens_cap=settings.max_tokens_cap,
        allowed_models=settings.allowed_model_set,
    )
    if not key.allows_model(chat.model):
        raise ModelNotAllowed(f"This key may not use the model '{chat.model}'.", param="model")
    framing: Framing | None = NDJSONFraming() if ndjson else (SSEFraming() if chat.stream else None)
    ctx = RequestContext(
        request_id=request_id,
        key=key,
        chat=chat,
        mode="ndjson" if ndjson else ("sse" if chat.stream else "json"),
        started_at=time.monotonic(),
        started_epoch=time.time(),
        deadline=_deadline(request.headers, settings),
        lambda_request_id=lambda_request_id(request.headers),
    )
    cancel_event = services.cancels.register(request_id)
    try:
        headers = await services.admission.admit(ctx)
        try:
            opened = await _open_upstream(services, ctx, chat, cancel_event)
        except (UpstreamError, RequestCancelled) as exc:
            await _finalize_failed_open(services, ctx, exc)
            exc.headers.update(headers)
            raise
        except Exception as exc:  # admitted, so finalized whatever happened: a slot must not leak
            logger.exception("opening the upstream request failed for %s", request_id)
            failure = UpstreamError(f"Upstream request failed ({type(exc).__name__}).")
            await _finalize_failed_open(services, ctx, failure)
            failure.headers.update(headers)
            raise failure from exc
        except BaseException:  # cancelled (the server is shutting down): still finalized
            await _finalize_failed_open(services, ctx, UpstreamError("The request was interrupted."))
            raise
    except BaseException:
        services.cancels.unregister(request_id)
        raise
    ctx.retries = opened.retries
    ctx.upstream_errors = opened.status_errors
    return _RegisteredRelay(
        RelayResponse(
            ctx,
            opened,
            framing=framing,
            cancel_event=cancel_event,
            cancelled_at=lambda: services.cancels.cancelled_at(request_id),
            finalizer=services.finalizer,
            pricer=services.pricer,
            settings=settings,
            headers=headers,
        ),
        services.cancels,
    )


async def _open_upstream(
    services: Services, ctx: RequestContext, chat: ChatRequest, cancel_event: anyio.Event
) -> OpenedStream:
    """Open the upstream stream (with its retries), unless the client cancels or the deadline comes first:
    the watchers of the stream do not run yet, so this wait is bounded here."""
    assert services.upstream is not None
    opened: OpenedStream | None = None
    failure: Exception | None = None  # raised after the task group, which would wrap it in an ExceptionGroup
    async with anyio.create_task_group() as tg:

        async def stop_on_cancel() -> None:
            await cancel_event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(stop_on_cancel)
        with anyio.move_on_after(max(0.0, (ctx.deadline or math.inf) - time.monotonic())):
            try:
                opened = await services.upstream.open_chat_stream(chat.upstream_body(), ctx.request_id)
            except Exception as exc:
                failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if opened is not None:
        return opened
    if cancel_event.is_set():
        raise RequestCancelled("The request was cancelled before the upstream answered.")
    raise UpstreamTimeout("The relay's time limit was reached before the upstream answered.", code="deadline")


async def _finalize_failed_open(services: Services, ctx: RequestContext, exc: RelayError) -> None:
    """The upstream never answered 2xx (after retries): the request was admitted, so it is still finalized."""
    if isinstance(exc, RequestCancelled):
        reason = TerminationReason.CLIENT_CANCELLED
    elif exc.code == "deadline":
        reason = TerminationReason.DEADLINE
    elif isinstance(exc, UpstreamTimeout):
        reason = TerminationReason.UPSTREAM_TIMEOUT
    else:
        reason = TerminationReason.UPSTREAM_ERROR
    if isinstance(exc, UpstreamError):
        ctx.retries = exc.retries
        ctx.upstream_errors = exc.failures
    outcome = StreamOutcome(
        reason=reason,
        usage=Usage(estimate_prompt_tokens(ctx.chat.messages_as_dicts()), 0, estimated=True),
        ttft_s=None,
        tpot_s=None,
        duration_s=time.monotonic() - ctx.started_at,
        chunks=0,
        error=exc.message,
        cost_usd=Decimal(0),  # the upstream never answered: nothing was billed
    )
    with anyio.CancelScope(shield=True):
        await services.finalizer.finalize(ctx, outcome)


class _RegisteredRelay(Response):
    """Runs the relay and always unregisters the stream from the cancel registry afterwards."""

    def __init__(self, relay: RelayResponse, cancels: CancelRegistry) -> None:
        super().__init__()
        self._relay = relay
        self._cancels = cancels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._relay(scope, receive, send)
        finally:
            self._cancels.unregister(self._relay.ctx.request_id)


async def _read_body(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {cap}.")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > cap:
            raise PayloadTooLarge(f"Request body exceeds the limit of {cap} bytes.")
    return bytes(body)


def _deadline(headers: Mapping[str, str], settings: Settings) -> float:
    """When the stream must end (monotonic): the Lambda deadline the web adapter passes in
    `x-amzn-lambda-context`, else the configured function timeout; minus the safety margin. The header is
    never trusted beyond the function timeout (outside the adapter a client could send it)."""
    remaining = settings.function_timeout_s
    raw = headers.get("x-amzn-lambda-context")
    if raw:
        try:
            from_header = float(json.loads(raw)["deadline"]) / 1000 - time.time()
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable x-amzn-lambda-context header")
        else:
            if math.isfinite(from_header):
                remaining = min(remaining, from_header)
    return time.monotonic() + remaining - settings.deadline_margin_s


def _install_error_handlers(app: FastAPI, telemetry: Telemetry) -> None:
    @app.exception_handler(RelayError)
    async def relay_error(request: Request, exc: RelayError) -> JSONResponse:
        if exc.rejection in REJECTION_REASONS:
            request_id = getattr(request.state, "request_id", None)
            telemetry.rejected(exc.rejection, exc.status_code, exc.code, request_id, lambda_request_id(request.headers))
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = NotFound("Unknown route.") if exc.status_code == 404 else InvalidRequest(str(exc.detail))
        error.status_code = exc.status_code
        if exc.status_code == 405:
            error.code = "method_not_allowed"
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(InvalidRequest("Invalid request.").body(), status_code=400)
