"""Opening a request's upstream stream: the table's route for the model, then its fallbacks, over the shared HTTP
exchange. A fallback is taken, after that upstream's own retries, only when none of its attempts can have reached
a model (`http.FALLBACK_TRANSPORT`, `http.FALLBACK_STATUS`: stricter than the retries with
`RELAY_RETRY_AMBIGUOUS`); never once a response started, and never after a 4xx (the request itself is at fault, or
the relay's credentials)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..embeddings_request import EmbeddingsRequest
from ..errors import ConfigurationError, InvalidRequest, UpstreamError
from ..settings import Settings
from .base import Dialect, KeyProvider, UpstreamRequest, http_headers
from .embeddings import (
    ACCEPT,
    EmbeddingsResult,
    embeddings_body,
    embeddings_http_request,
    post_embeddings,
    read_embeddings_answer,
)
from .http import HttpExchange, OpenedStream, Progress
from .table import RELAY_KEY_ENV, Route, UpstreamSpec, UpstreamTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one request goes: its routes in order, the first one's request already built, and what the open
    has tried so far."""

    routes: list[Route]
    first: UpstreamRequest = field(repr=False)  # its headers hold the upstream's credentials
    body: dict[str, Any] = field(repr=False)
    request_id: str = ""
    progress: Progress = field(default_factory=Progress)
    billed_as: tuple[str, ...] = ()  # per route: the model it sends where that has a price, else the client's
    # The client's request in its own API (a Responses request), for routes whose upstream speaks that API (the
    # `openai` kind): sent as it is, its events relayed as they come. None, or another kind: `body`, translated.
    native: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def upstream(self) -> str:
        return self.routes[0].name


class Upstreams:
    """The relay's upstreams: one dialect per table entry, built once, and one HTTP exchange for all."""

    def __init__(
        self,
        settings: Settings,
        table: UpstreamTable,
        *,
        default_key: KeyProvider | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        dialect_factory: Callable[[UpstreamSpec], Dialect] | None = None,
        priced: Callable[[str], bool] | None = None,
    ) -> None:
        self.table = table
        self._priced = priced or (lambda model: False)
        self._settings = settings
        self._transport = transport
        self._default_key = default_key  # the relay's own key, for the entries whose api_key_env names it
        self.exchange = HttpExchange(settings, transport=transport)
        build = dialect_factory or (lambda spec: dialect_for(spec, default_key))
        self._dialects: dict[str, Dialect] = {}
        self._native_dialects: dict[str, Dialect] = {}  # the Responses API of `openai` upstreams, built when used
        self._no_responses: set[str] = set()  # `openai` upstreams found without one (404/405): translated for
        for spec in table.specs:
            try:
                dialect = build(spec)
                start = getattr(dialect, "start", None)  # what a dialect builds once (Bedrock: its client)
                if start is not None:
                    start()
            except ValueError as exc:  # e.g. an ndjson upstream's field paths, a Bedrock upstream without a region
                raise ConfigurationError(f"RELAY_UPSTREAMS: upstream {spec.name!r}: {exc}") from None
            self._dialects[spec.name] = dialect

    async def plan(
        self, body: dict[str, Any], model: str, request_id: str, native: dict[str, Any] | None = None
    ) -> Plan:
        """The routes for `model`, and the first one's request built: a model no upstream serves, or a field its
        upstream cannot honour, is refused here, before admission (a 400 that costs nothing). `native`: the
        client's Responses request, sent as it is to a route of the `openai` kind."""
        routes = self.table.routes(model)
        dialect, sent = self._dialect(routes[0], body, native)
        first = await dialect.request(sent, routes[0].model, request_id)
        billed = tuple(route.model if self._priced(route.model) else model for route in routes)
        return Plan(routes, first, body, request_id, billed_as=billed, native=native)

    def _dialect(
        self, route: Route, body: dict[str, Any], native: dict[str, Any] | None
    ) -> tuple[Dialect, dict[str, Any]]:
        """The dialect and the body for one route: the Responses request as it is for an `openai` upstream, else
        the chat request."""
        if native is not None and route.spec.kind == "openai" and route.name not in self._no_responses:
            return self._responses_dialect(route.spec), native
        return self._dialects[route.name], body

    def _responses_dialect(self, spec: UpstreamSpec) -> Dialect:
        dialect = self._native_dialects.get(spec.name)
        if dialect is None:
            from .openai_responses import OpenAIResponsesDialect

            assert spec.url is not None
            key = self._default_key if spec.api_key_env == RELAY_KEY_ENV else _env_key(spec.api_key_env)
            dialect = self._native_dialects[spec.name] = OpenAIResponsesDialect(spec.url, key)
        return dialect

    async def open(self, plan: Plan) -> OpenedStream:
        """The first route that answers 2xx. A route's failure, after its own retries, moves on to the next route
        only when no model can have seen the request (`fallback_ok`); a fallback that cannot take the request (a
        field its kind cannot honour, no credentials) is skipped. The last failure is raised; `plan.progress`
        holds the attempts of every route, whatever ends the open."""
        progress = plan.progress
        model = str(plan.body.get("model") or plan.routes[0].model)  # the client's name, in every chunk it gets
        last: UpstreamError | None = None
        for index, route in enumerate(plan.routes):
            dialect, body = self._dialect(route, plan.body, plan.native)
            prepared = plan.first if index == 0 else await self._fallback_request(plan, route, dialect, body)
            if prepared is None:
                continue
            progress.upstream = route.name
            try:
                opened = await self._open_on(plan, route, prepared, dialect, model)
            except UpstreamError as failure:
                failure.upstream = route.name
                if not failure.fallback_ok:
                    raise
                last = failure
                if index < len(plan.routes) - 1:
                    logger.warning("upstream %s failed for %s (%s)", route.name, plan.request_id, failure.code)
                continue
            opened.upstream, opened.billed_as = route.name, plan.billed_as[index]
            opened.renamed = model if route.model != model else ""
            return opened
        assert last is not None  # the first route is always tried
        raise last

    async def _open_on(
        self, plan: Plan, route: Route, prepared: UpstreamRequest, dialect: Dialect, model: str
    ) -> OpenedStream:
        """One route's open. An `openai` upstream that has no Responses API (vLLM, LiteLLM, Ollama's `/v1` answer
        404 or 405 at `/responses`) is sent the translated chat request at once, and from then on."""
        try:
            return await self.exchange.open(prepared, dialect, model, plan.progress)
        except UpstreamError as failure:
            if dialect is self._dialects[route.name] or failure.upstream_status not in (404, 405):
                raise
        logger.info("upstream %s has no Responses API: Responses requests are translated for it", route.name)
        self._no_responses.add(route.name)
        chat = self._dialects[route.name]
        translated = await chat.request(plan.body, route.model, plan.request_id)
        return await self.exchange.open(translated, chat, model, plan.progress)

    async def _fallback_request(
        self, plan: Plan, route: Route, dialect: Dialect, body: dict[str, Any]
    ) -> UpstreamRequest | None:
        """A fallback's request, or None when it cannot take this one (it is skipped, and logged)."""
        try:
            return await dialect.request(body, route.model, plan.request_id)
        except (InvalidRequest, UpstreamError) as refused:
            logger.warning("fallback %s cannot take %s: %s", route.name, plan.request_id, refused.message)
            return None

    def embeddings_route(self, request: EmbeddingsRequest) -> Route:
        """The route of an embeddings request: the table's first for its model, and no fallback (another upstream's
        vectors lie in another space; mixed into one index they would be wrong without a sign). Raises before
        admission, at no cost: `ModelNotAllowed` when no upstream serves the model, `InvalidRequest` when its kind
        has no embeddings API (param `model`) or cannot honour a field of the request (naming it)."""
        route = self.table.routes(request.model)[0]
        embeddings_body(route.spec.kind, request, route.model)
        return route

    async def embed(
        self, request: EmbeddingsRequest, request_id: str, progress: Progress | None = None
    ) -> EmbeddingsResult:
        """The embeddings of `request` from its route's upstream, in OpenAI's answer naming the client's model.
        `UpstreamError` (its `upstream` set) after the exchange's retries, or when a 2xx answer cannot be used
        (then counted in `progress.maybe_billed`: the model did answer). `progress` counts the attempts as they
        happen, whatever ends the call; the caller's cancel scope bounds it."""
        route = self.embeddings_route(request)
        spec = route.spec
        assert spec.url is not None  # the kinds with embeddings are HTTP kinds
        key = self._default_key if spec.api_key_env == RELAY_KEY_ENV else _env_key(spec.api_key_env)
        prepared = embeddings_http_request(
            spec.kind, spec.url, request, route.model, await http_headers(key, request_id, ACCEPT)
        )
        progress = progress if progress is not None else Progress()
        progress.upstream = route.name
        try:
            idle_s = self._settings.upstream_idle_timeout_s
            raw = await post_embeddings(self.exchange, prepared, idle_timeout_s=idle_s, progress=progress)
            try:
                result = await read_embeddings_answer(spec.kind, raw, request, request.model)
            except UpstreamError:
                progress.maybe_billed += 1
                raise
        except UpstreamError as failure:
            failure.upstream = route.name
            raise
        billed_as = route.model if self._priced(route.model) else request.model
        return EmbeddingsResult(result.body, result.prompt_tokens, route.name, billed_as)

    def connect(self) -> None:
        """A fresh HTTP exchange, if the last one was closed: an app's lifespan may run more than once (Mangum runs
        it around every invocation)."""
        if self.exchange.client.is_closed:
            self.exchange = HttpExchange(self._settings, transport=self._transport)

    async def aclose(self) -> None:
        await self.exchange.aclose()

    async def renew(self) -> None:
        """After a SnapStart restore: a fresh pool and jitter, and dialects drop what they built (clients and
        credentials captured in the snapshot)."""
        await self.exchange.renew()
        for dialect in self._dialects.values():
            renew = getattr(dialect, "renew", None)
            if renew is not None:
                renew()


def dialect_for(spec: UpstreamSpec, default_key: KeyProvider | None) -> Dialect:
    """The dialect of one table entry. Kinds other than `openai` are imported only when configured: a relay
    without Bedrock never imports boto3's bedrock code at start-up."""
    key = default_key if spec.api_key_env == RELAY_KEY_ENV else _env_key(spec.api_key_env)
    if spec.kind == "openai":
        from .openai import OpenAIDialect

        assert spec.url is not None
        return OpenAIDialect(spec.url, key)
    if spec.kind == "ollama":
        from .ndjson import OllamaDialect

        assert spec.url is not None
        return OllamaDialect(spec.url, key)
    if spec.kind == "ndjson":
        from .ndjson import NDJSONDialect

        assert spec.url is not None
        return NDJSONDialect(spec.url, key, spec.fields)
    from .bedrock import BedrockDialect

    return BedrockDialect(spec.region, spec.url)


def _env_key(name: str | None) -> KeyProvider | None:
    if name is None:
        return None

    async def key() -> str | None:
        return os.environ.get(name, "").strip() or None

    return key
