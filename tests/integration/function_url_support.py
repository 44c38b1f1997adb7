"""The relay behind the local function-URL front (llm_relay_dev.function_url), as `make dev LAMBDA=1` runs it:
each execution environment is a relay of its own on the test's table and mock upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from llm_relay.app import create_app
from llm_relay.dynamo import Stores
from llm_relay.settings import Settings
from llm_relay_dev.dev_key import ensure_dev_key
from llm_relay_dev.function_url import FrontLimits, FunctionUrlFront, StartEnvironment
from tests.conftest import Upstream
from tests.integration.helpers import RecordingFinalizer
from tests.servers import serve


@dataclass
class LambdaRelay:
    url: str  # the function URL
    key: str
    front: FunctionUrlFront
    recorder: RecordingFinalizer
    stores: Stores

    def headers(self, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}", **extra}


LambdaRelayFactory = Callable[..., LambdaRelay]


@pytest.fixture
def make_lambda_relay(stores: Stores, upstream: Upstream, moto_endpoint: str) -> Iterator[LambdaRelayFactory]:
    """A function-URL front; `limits` for the front, `start` to wrap how it starts an environment (a relay), the
    rest are relay settings (defaults as deployed, except the test's table, upstream and fast retries)."""
    plain, _ = ensure_dev_key(stores.keys)
    with ExitStack() as stack:

        def factory(
            limits: FrontLimits | None = None,
            start: Callable[[StartEnvironment], StartEnvironment] | None = None,
            **overrides: Any,
        ) -> LambdaRelay:
            settings = Settings(
                **{
                    "upstream_url": upstream.url,
                    "dynamodb_endpoint": moto_endpoint,
                    "table_name": stores.table_name,
                    "upstream_retry_base_s": 0.01,
                    **overrides,
                }
            )
            recorder = RecordingFinalizer()

            def environment() -> AbstractContextManager[str]:
                return serve(create_app(settings, stores=stores, finalizers=[recorder]))

            front = FunctionUrlFront(start(environment) if start else environment, limits)
            url = stack.enter_context(serve(front))
            return LambdaRelay(url, plain, front, recorder, stores)

        yield factory
