"""Shared fixtures: a moto DynamoDB server (the table built from template.yaml), the mock upstream and the
relay, each a real server on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.applications import Starlette

from llm_relay.app import create_app
from llm_relay.dynamo import Stores, make_client
from llm_relay.keys import ApiKey
from llm_relay.settings import Settings
from llm_relay_dev.dev_key import ensure_dev_key
from llm_relay_dev.mock_upstream import MockState, create_mock_app
from llm_relay_dev.table import create_table
from tests.servers import serve

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_DEV", "false")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto server (HTTP), shared by the session; each test gets its own table. It lets one request at a
    time into moto: moto's transactions are not atomic under concurrent requests (see llm_relay_dev.local_dynamodb)."""
    from llm_relay_dev.local_dynamodb import MotoServer

    with MotoServer() as endpoint:
        yield endpoint


@pytest.fixture
def stores(moto_endpoint: str) -> Stores:
    table = f"relay-{uuid.uuid4().hex[:10]}"
    client = make_client(moto_endpoint)  # the region: the session's (AWS_DEFAULT_REGION above)
    create_table(client, table)
    return Stores.create(table, client)


@dataclass
class Upstream:
    url: str  # base URL ending in /v1
    state: MockState


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    app = create_mock_app()
    with serve(app) as base:
        yield Upstream(f"{base}/v1", app.state.mock)


@dataclass
class Relay:
    url: str
    key: str
    api_key: ApiKey
    app: Starlette
    stores: Stores
    settings: Settings

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.key}"}


RelayFactory = Callable[..., Relay]


@pytest.fixture
def make_relay(stores: Stores, upstream: Upstream, moto_endpoint: str) -> Iterator[RelayFactory]:
    """Start a relay on loopback with settings overrides; stopped at the end of the test."""
    stack: list[Any] = []
    plain, key = ensure_dev_key(stores.keys)  # one key for every relay instance of the test

    def factory(**overrides: Any) -> Relay:
        values: dict[str, Any] = {
            "upstream_url": upstream.url,
            "dynamodb_endpoint": moto_endpoint,
            "table_name": stores.table_name,
            "cancel_poll_interval_s": 0.05,
            "upstream_retry_base_s": 0.01,
            # The session's moto is one serialized server shared by every test: on a loaded machine a burst of
            # admissions can queue past the production bounds. The bounds themselves are tested against a
            # DynamoDB of their own (test_ledger.py: 503 within 3 s, the body closed within 5 s).
            "admission_timeout_s": 15.0,
            "finalize_timeout_s": 15.0,
        }
        values.update(overrides)
        app_kwargs = values.pop("app_kwargs", None) or {}
        settings = Settings(**values)
        app_kwargs.setdefault("stores", stores)
        app = create_app(settings, **app_kwargs)
        context = serve(app)
        base = context.__enter__()
        stack.append(context)
        return Relay(base, plain, key, app, stores, settings)

    yield factory
    for context in reversed(stack):
        context.__exit__(None, None, None)


@pytest.fixture
def relay(make_relay: RelayFactory) -> Relay:
    return make_relay()


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    """What a test opens (an SDK client and its connection pool) closed at its end, whatever the test did: a client
    left to the garbage collector closes its sockets during a later test, which then fails on the warning."""
    with ExitStack() as stack:
        yield stack
