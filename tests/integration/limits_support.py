"""Support for the limits tests: request contexts, a limiter wired to a moto table, and the worker that races
admissions from another process (spawned, so it shares nothing with the test process but DynamoDB)."""

from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import Any

from llm_relay.chat_request import ChatRequest
from llm_relay.dynamo import Stores, make_client
from llm_relay.dynamo.layout import key_from_item
from llm_relay.keys import ApiKey, generate_key_id
from llm_relay.limits import Limiter
from llm_relay.limits.reporting import LimitsMetrics
from llm_relay.outcome import Prompt, RequestContext
from llm_relay.pricing import PriceTable
from llm_relay.reconciler import Reconciler
from llm_relay.settings import Settings

#: The middle of a minute, so a race never straddles a window boundary.
MID_MINUTE = (int(time.time()) // 60) * 60 + 30.0


def key_with(**limits: int | str) -> ApiKey:
    return ApiKey(key_id=generate_key_id(), name="test", limits={k: Decimal(str(v)) for k, v in limits.items()})


def context(key: ApiKey, request_id: str, *, max_tokens: int | None = None) -> RequestContext:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return RequestContext(
        request_id=request_id,
        key=key,
        chat=(chat := ChatRequest.model_validate(body)),
        prompt=Prompt.of(chat),
        mode="sse",
        started_at=time.monotonic(),
        started_epoch=time.time(),
    )


def limiter(
    endpoint: str,
    table: str,
    *,
    clock: Any = None,
    metrics: LimitsMetrics | None = None,
    client: Any = None,
    log: Any = None,
    **overrides: Any,
) -> Limiter:
    """A limiter on the table; `client` replaces the DynamoDB client (a failing or conflicting one)."""
    # The session's moto is one serialized server shared by every test: roomy bounds, as conftest's relays have (the
    # production bounds are tested against a DynamoDB of their own, test_ledger.py).
    bounds = {"admission_timeout_s": 15.0, "finalize_timeout_s": 15.0}
    settings = Settings(table_name=table, dynamodb_endpoint=endpoint, **{**bounds, **overrides})
    stores = Stores.create(table, client or make_client(endpoint))
    prices = PriceTable.load(settings.prices_json)
    clock = clock or (lambda: MID_MINUTE)
    return Limiter(
        stores,
        settings,
        clock=clock,
        metrics=metrics,
        pricer=prices,
        reconciler=Reconciler(stores, prices, settings.usage_retention_days, clock=clock),
        log=log,
    )


def admit_all(limits: Limiter, key: ApiKey, n: int, prefix: str = "req", **kwargs: Any) -> list[str]:
    """Fire n admissions at once (each in its own worker thread); 'admitted' or 'refused' for each."""
    import anyio

    from llm_relay.errors import RateLimited

    outcomes: list[str] = []

    async def one(i: int) -> None:
        try:
            await limits.admit(context(key, f"{prefix}_{i}", **kwargs))
            outcomes.append("admitted")
        except RateLimited:
            outcomes.append("refused")

    async def burst() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)

    anyio.run(burst)
    return outcomes


def race_worker(
    endpoint: str,
    table: str,
    keys: list[dict[str, Any]],
    per_key: int,
    now: float,
    barrier: Any,
    results: Any,
    worker: int,
) -> None:
    """In a spawned process: for each key in turn, wait for every process, then fire `per_key` admissions at
    once; report how many were admitted."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    limits = limiter(endpoint, table, clock=lambda: now)
    for item in keys:
        key = key_from_item(item)
        barrier.wait(timeout=60)
        outcomes = admit_all(limits, key, per_key, prefix=f"req_{worker}_{key.key_id}")
        results.put((key.key_id, worker, outcomes.count("admitted"), outcomes.count("refused")))
