"""Support for the relay's tests against a local DynamoDB that throttles as DynamoDB does: the throttled server and
its table, a relay on it, keys with limits, and bursts of parallel requests with what each answered and when."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from llm_relay.app import create_app
from llm_relay.dynamo import Stores, make_client
from llm_relay.keys import ApiKey, generate_key, generate_key_id, hash_key
from llm_relay.settings import Settings
from llm_relay_dev.local_dynamodb import MotoServer
from llm_relay_dev.table import create_table
from llm_relay_dev.throttling import Throttle, index_resource
from tests.integration.helpers import chat_body
from tests.servers import serve

#: A short answer, at once: the requests' DynamoDB writes are what the tests load.
SHORT = {"tokens": 3, "chunk_delay_ms": 0, "ttft_ms": 0}
CHAT_PATH = "/api/v1/chat/stream"


class Clock:
    """The throttle's clock: monotonic time, unless frozen. A frozen clock holds every partition in its window, so a
    partition used up stays throttled until `thaw()` (which moves time on to a later window)."""

    def __init__(self) -> None:
        self._frozen: float | None = None
        self._skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self._skipped if self._frozen is None else self._frozen

    def freeze(self) -> None:
        self._frozen = self()

    def thaw(self, skip: float = 1.0) -> None:
        """Let time run again, `skip` seconds later than when it froze (at least one 1 s window on)."""
        assert self._frozen is not None
        self._skipped = self._frozen + skip - time.monotonic()
        self._frozen = None


@dataclass
class Throttled:
    """A throttled local DynamoDB, its table and the stores on it."""

    endpoint: str
    throttle: Throttle
    stores: Stores

    @property
    def table(self) -> str:
        return self.stores.table_name

    def throttled_on(self, resource: str) -> dict[str, int]:
        """Requests refused by partition of `resource` (the table's name, or `index:<name>` for an index)."""
        name = self._resource(resource)
        return {part: n for (res, part), n in self.throttle.throttled.items() if res == name}

    def consumed_on(self, resource: str) -> dict[str, float]:
        """Write units consumed by partition of `resource` (as `throttled_on`)."""
        name = self._resource(resource)
        return {part: units for (res, part), units in self.throttle.consumed_write.items() if res == name}

    def peak_on(self, resource: str) -> float:
        """The most write units `resource` took in one window, over all its partitions."""
        return self.throttle.peak_write.get(self._resource(resource), 0.0)

    def _resource(self, resource: str) -> str:
        index = resource.removeprefix("index:")
        return index_resource(self.table, index) if index != resource else resource


@contextmanager
def throttled_dynamodb(throttle: Throttle) -> Iterator[Throttled]:
    """A local DynamoDB of its own, throttled by `throttle`, with the relay's table."""
    with MotoServer(throttle=throttle) as endpoint:
        table = f"throttled-{uuid.uuid4().hex[:8]}"
        client = make_client(endpoint)
        create_table(client, table)
        yield Throttled(endpoint, throttle, Stores.create(table, client))


@contextmanager
def relay_on(dynamo: Throttled, upstream_url: str, **overrides: Any) -> Iterator[str]:
    """A relay on loopback, on the throttled DynamoDB (its base URL), with production's DynamoDB bounds unless
    `overrides` says otherwise: the timeouts are what a throttled partition is measured against."""
    values: dict[str, Any] = {
        "upstream_url": upstream_url,
        "dynamodb_endpoint": dynamo.endpoint,
        "table_name": dynamo.table,
        "cancel_poll_interval_s": 0.2,
        "upstream_retry_base_s": 0.01,
    }
    values.update(overrides)
    app = create_app(Settings(**values), stores=Stores.create(dynamo.table, make_client(dynamo.endpoint)))
    with serve(app) as base:
        yield base


def new_key(stores: Stores, **limits: int | str) -> tuple[str, ApiKey]:
    """A key with these limits in the table: its plain value and its record."""
    plain = generate_key()
    key = ApiKey(key_id=generate_key_id(), name="throttled", limits={k: Decimal(str(v)) for k, v in limits.items()})
    stores.keys.put(key, hash_key(plain))
    return plain, key


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: str
    ended_at: float  # time.monotonic() when the whole body was read

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        return None if value is None else float(value)


async def _one(client: httpx.AsyncClient, url: str, plain: str) -> Answer:
    body = chat_body(mock=SHORT)
    response = await client.post(url + CHAT_PATH, json=body, headers={"authorization": f"Bearer {plain}"})
    return Answer(response.status_code, response.headers, response.text, time.monotonic())


def burst(url: str, plains: list[str]) -> list[Answer]:
    """One request per entry of `plains` (a key's plain value; repeat it to send it several), all at once; every
    answer read to its end."""

    async def run() -> list[Answer]:
        limits = httpx.Limits(max_connections=len(plains) + 1)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(*(_one(client, url, plain) for plain in plains))

    return asyncio.run(run())


def ask(url: str, plain: str) -> Answer:
    """One request, read to its end."""
    return burst(url, [plain])[0]
