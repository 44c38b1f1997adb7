"""Opening a request's upstream stream: the table's route for the model, then its fallbacks, over the shared HTTP
exchange. A fallback is taken only when the failed upstream cannot have started generating (the rule of the
retries: connect failures, 429, 5xx before any byte), after that upstream's own retries; never once a response
started, and never after a 4xx (the request itself is at fault, or the relay's credentials)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import ConfigurationError, InvalidRequest, UpstreamError
from ..settings import Settings
from .base import Dialect, KeyProvider, UpstreamRequest
from .http import HttpExchange, OpenedStream
from .table import RELAY_KEY_ENV, Route, UpstreamSpec, UpstreamTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one request goes: its routes in order, the first one's request already built."""

    routes: list[Route]
    first: UpstreamRequest
    body: dict[str, Any]
    request_id: str

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
    ) -> None:
        self.table = table
        self._settings = settings
        self._transport = transport
        self.exchange = HttpExchange(settings, transport=transport)
        build = dialect_factory or (lambda spec: dialect_for(spec, default_key))
        self._dialects: dict[str, Dialect] = {}
        for spec in table.specs:
            try:
                self._dialects[spec.name] = build(spec)
            except ValueError as exc:  # e.g. an ndjson upstream's field paths
                raise ConfigurationError(f"RELAY_UPSTREAMS: upstream {spec.name!r}: {exc}") from None

    async def plan(self, body: dict[str, Any], model: str, request_id: str) -> Plan:
        """The routes for `model`, and the first one's request built: a model no upstream serves, or a field its
        upstream cannot honour, is refused here, before admission (a 400 that costs nothing)."""
        routes = self.table.routes(model)
        first = await self._dialects[routes[0].name].request(body, routes[0].model, request_id)
        return Plan(routes, first, body, request_id)

    async def open(self, plan: Plan) -> OpenedStream:
        """The first route that answers 2xx; each route's failure after its retries moves on to the next only when
        it is `retryable`. The last failure is raised, carrying the attempts of every route."""
        retries, errors = 0, dict[str, int]()
        last: UpstreamError | None = None
        for index, route in enumerate(plan.routes):
            dialect = self._dialects[route.name]
            try:
                prepared = plan.first if index == 0 else await dialect.request(plan.body, route.model, plan.request_id)
                opened = await self.exchange.open(prepared, dialect, route.model)
            except UpstreamError as failure:
                failure.upstream = route.name
                retries += failure.retries + (1 if index else 0)
                errors = _merged(errors, failure.failures)
                failure.retries, failure.failures = retries, errors
                if not failure.retryable or index == len(plan.routes) - 1:
                    raise
                last = failure
                logger.warning(
                    "upstream %s failed for %s (%s); falling back to %s",
                    route.name,
                    plan.request_id,
                    failure.code,
                    plan.routes[index + 1].name,
                )
                continue
            except InvalidRequest as refused:  # only a fallback's: the first route's request was built in `plan`
                logger.warning("fallback %s cannot take %s: %s", route.name, plan.request_id, refused.message)
                assert last is not None  # a fallback is tried only after a failure
                raise last from None
            opened.upstream = route.name
            opened.retries += retries + (1 if index else 0)
            opened.status_errors = _merged(errors, opened.status_errors)
            return opened
        raise AssertionError("a route list is never empty")

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


def _merged(first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
    merged = dict(first)
    for kind, count in second.items():
        merged[kind] = merged.get(kind, 0) + count
    return merged
