"""The FastAPI app: routes, the request-id middleware, and the one place where errors become HTTP answers.
`create_app()` takes settings and dependencies, so tests and entry points (run.sh/uvicorn, Mangum, dev server)
build the same app. What a request goes through is `pipeline.Pipeline`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from aws_lambda_powertools import Logger
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import client_request_id, snapstart
from .apis.base import Api
from .apis.chat import ChatApi
from .apis.messages import MessagesApi
from .apis.responses import ResponsesApi
from .auth import Authenticator
from .cancellation import CancelCalls, CancelRegistry
from .dynamo import Stores
from .errors import ConfigurationError, InvalidRequest, NotFound, RelayError
from .finalize import Finalizers
from .lambda_context import HEADER as LAMBDA_CONTEXT_HEADER
from .lambda_context import LambdaInvocation
from .leases import LeaseKeeper, Leases
from .limits import Admission, Limiter
from .limits.rules import default_limits
from .metrics import REJECTION_REASONS, MetricsEmitter
from .model_list import model_list, model_object, usable_models
from .outcome import Finalizer
from .pipeline import Pipeline
from .pricing import PriceTable
from .reconciler import Reconciler
from .settings import Settings
from .telemetry import Telemetry
from .upstream_key import UpstreamKeyProvider
from .upstreams.router import Upstreams
from .upstreams.table import UpstreamTable, load_table

if TYPE_CHECKING:
    from .sanitize.guardrail import Guardrail

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


class RequestScopeMiddleware:
    """Gives every request an id (`scope["state"]["request_id"]`) and every response an `x-request-id`; reads
    the Lambda invocation the request belongs to, once (`scope["state"]["lambda_invocation"]`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        request_headers = Headers(scope=scope)
        state["lambda_invocation"] = LambdaInvocation.from_headers(request_headers)
        echo = _client_id_echo(request_headers)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(echo)
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


def _client_id_echo(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The X-Client-Request-Id header to echo on the response, if the request sent a valid one."""
    value = headers.get(client_request_id.HEADER)
    try:
        return (
            [] if value is None else [(client_request_id.HEADER.encode(), client_request_id.validate(value).encode())]
        )
    except InvalidRequest:
        return []


def _known_models(settings: Settings, prices: PriceTable) -> set[str]:
    """Models that may name a metric dimension: the allow-list and the priced models (bounded sets; a
    free-text model name from a client would make a new CloudWatch metric per value)."""
    return set(settings.allowed_model_set or ()) | set(prices.models)


def require_upstream(settings: Settings) -> UpstreamTable:
    """The upstream table, or `ConfigurationError`: a deployment with nowhere (or nowhere valid) to send requests
    must fail at start-up, not answer users with anything."""
    stored = bool(settings.upstream_secret_arn or settings.upstream_ssm_parameter)
    return load_table(settings.upstreams, settings.upstream_url, relay_key_stored=stored)


def load_prices(settings: Settings) -> PriceTable:
    """The price table, or `ConfigurationError` for a `RELAY_PRICES_JSON` that cannot be used (not JSON, a negative
    price, ...): a relay that priced requests wrongly would bill and budget them wrongly without a word."""
    try:
        return PriceTable.load(settings.prices_json)
    except ValueError as exc:
        raise ConfigurationError(f"RELAY_PRICES_JSON: {str(exc).removeprefix('prices: ')}") from None


def create_app(
    settings: Settings | None = None,
    *,
    stores: Stores | None = None,
    limiter: Admission | None = None,
    leases: Leases | None = None,
    finalizers: list[Finalizer] | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The relay's app, and the one place its parts are built and joined (the composition root): every part a test or
    a benchmark swaps comes in here, never by patching a module. `limiter`: admission, budget extension and settlement
    (default: the DynamoDB `Limiter`); `leases`: the lease keeper; `finalizers`: more parts run at each request's end;
    `upstream_transport`: the HTTP transport under every upstream client (a test's fake upstream).

    No OpenAPI schema, no docs: nothing reads them, and building the schema costs start-up time. Routes take the raw
    `Request` (the pipeline parses and validates the body itself)."""
    settings = settings or Settings()
    table = require_upstream(settings)
    stores = stores or Stores.from_settings(settings)
    prices = load_prices(settings)
    telemetry = Telemetry(
        MetricsEmitter(settings.metrics_namespace, settings.service_name, _known_models(settings, prices)),
        Logger(service=settings.service_name, level=settings.log_level),
    )
    if limiter is None:
        reconciler = Reconciler(stores, prices, settings.usage_retention_days, on_lost=telemetry.settled_lost)
        limiter = Limiter(
            stores,
            settings,
            pricer=prices,
            reconciler=reconciler,
            metrics=telemetry.metrics,
            witness=telemetry,
            log=telemetry.logger,
        )
    # Built here, not in the lifespan: a table entry that cannot be built refuses the start (ConfigurationError).
    upstreams = Upstreams(
        settings,
        table,
        default_key=UpstreamKeyProvider(settings),
        transport=upstream_transport,
        priced=lambda model: prices.price_of(model) is not None,
    )
    pipeline = Pipeline(
        settings,
        requests=stores.requests,
        auth=Authenticator(stores.keys, settings.auth_cache_ttl_s),
        admission=limiter,
        cancels=CancelRegistry(stores.requests, settings.cancel_poll_interval_s, CancelCalls(default_limits(settings))),
        finalizer=Finalizers([limiter, telemetry, *(finalizers or [])]),
        pricer=prices,
        upstreams=upstreams,
        leases=leases or LeaseKeeper(stores.requests, settings.lease_s),
        guardrail=_guardrail(settings),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            upstreams.connect()
            stack.push_async_callback(upstreams.aclose)
            if pipeline.guardrail is not None:
                stack.callback(pipeline.guardrail.client.close)
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(pipeline.cancels.run_poller)
            tg.start_soon(pipeline.leases.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.pipeline = pipeline
    _install_error_handlers(app, telemetry)
    _install_routes(app, pipeline)
    _install_models_route(app, pipeline, settings, prices, table)
    app.add_middleware(RequestScopeMiddleware)
    return app


def _guardrail(settings: Settings) -> Guardrail | None:
    """The deployment's Bedrock guardrail (`RELAY_GUARDRAIL_ID`); its module is imported only when one is set."""
    if settings.guardrail_id is None:
        return None
    from .sanitize.guardrail import Guardrail, GuardrailConfig

    config = GuardrailConfig.from_settings(settings)
    assert config is not None
    return Guardrail(config)


def _install_routes(app: FastAPI, pipeline: Pipeline) -> None:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def relayed(api: Api) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            request.state.api = api  # errors answered before the stream are rendered in the API's shape
            return await pipeline.relay(request, api)

        return route

    async def embeddings(request: Request) -> Response:
        return await pipeline.embeddings(request)

    async def cancel(request: Request) -> JSONResponse:
        request_id = str(request.path_params["request_id"])
        return JSONResponse(await pipeline.cancel(request, request_id), status_code=202)

    app.add_route("/healthz", healthz, methods=["GET"])
    app.add_route("/v1/chat/completions", relayed(ChatApi()), methods=["POST"])
    app.add_route("/api/v1/chat/stream", relayed(ChatApi(ndjson=True)), methods=["POST"])
    app.add_route("/v1/responses", relayed(ResponsesApi()), methods=["POST"])
    app.add_route("/v1/messages", relayed(MessagesApi()), methods=["POST"])
    app.add_route("/v1/embeddings", embeddings, methods=["POST"])
    app.add_route("/v1/requests/{request_id}/cancel", cancel, methods=["POST"])
    if pipeline.settings.snapstart_after_restore_path:
        _install_after_restore_hook(app, pipeline, pipeline.settings.snapstart_after_restore_path)


def _install_after_restore_hook(app: FastAPI, pipeline: Pipeline, path: str) -> None:
    """The web adapter's SnapStart after-restore call (`snapstart`). The adapter makes it itself, with no
    invocation: a request forwarded from the function URL carries the Lambda context header and is refused."""

    async def after_restore_hook(request: Request) -> Response:
        if LAMBDA_CONTEXT_HEADER in request.headers:
            raise NotFound("Unknown route.")
        await snapstart.after_restore(pipeline.upstreams, pipeline.guardrail)
        return Response(status_code=204)

    app.add_route(path, after_restore_hook, methods=["POST"])


def _install_models_route(
    app: FastAPI, pipeline: Pipeline, settings: Settings, prices: PriceTable, table: UpstreamTable
) -> None:
    created = int(time.time())
    candidates = [*prices.models, *table.literal_models()]

    async def models(request: Request) -> JSONResponse:
        key = await pipeline.authenticate(request)
        names = usable_models(settings.allowed_model_set, key.allowed_models, candidates)
        return JSONResponse(model_list([name for name in names if table.serves(name)], created))

    async def one_model(request: Request) -> JSONResponse:
        """One model the key can reach (listed or not: a glob in the table routes names no list can spell out)."""
        key = await pipeline.authenticate(request)
        name = str(request.path_params["model"])
        allowed = settings.allowed_model_set
        if (allowed is not None and name not in allowed) or not key.allows_model(name) or not table.serves(name):
            raise NotFound(f"The model '{name}' does not exist or this key cannot use it.", code="model_not_found")
        return JSONResponse(model_object(name, created))

    # A plain route like the others: FastAPI's own (`@app.get`) would build a response model from the return type
    # at start-up, and to check whether it is a pydantic v1 model it imports `pydantic.v1` (~20 ms at full core).
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/v1/models/{model:path}", one_model, methods=["GET"])


def _install_error_handlers(app: FastAPI, telemetry: Telemetry) -> None:
    async def relay_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RelayError)
        if exc.rejection in REJECTION_REASONS:
            request_id = getattr(request.state, "request_id", None)
            invocation = getattr(request.state, "lambda_invocation", None) or LambdaInvocation()
            telemetry.rejected(exc.rejection, exc.status_code, exc.code, request_id, invocation.request_id)
        return JSONResponse(_shaped(request, exc.body(), exc.status_code), exc.status_code, exc.headers or None)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error = NotFound("Unknown route.") if exc.status_code == 404 else InvalidRequest(str(exc.detail))
        error.status_code = exc.status_code
        if exc.status_code == 405:
            error.code = "method_not_allowed"
        return JSONResponse(_shaped(request, error.body(), exc.status_code), status_code=exc.status_code)

    app.add_exception_handler(RelayError, relay_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _shaped(request: Request, body: dict[str, Any], status: int) -> dict[str, Any]:
    """An error body in the shape of the API the route speaks (Anthropic's for `/v1/messages`), OpenAI's otherwise."""
    api: Api | None = getattr(request.state, "api", None)
    return body if api is None else api.error(body, status)
