"""Budgets that refuse nothing they can cover, through a real relay and the local DynamoDB: parallel requests whose
`max_tokens` admission already reserved ask for no extension; a pending extension does not hold the final frame
back when DynamoDB is slow; a very short prompt is reserved at least at what its upstream bills for it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from llm_relay.app import create_app
from llm_relay.dynamo import Stores
from llm_relay.limits.budgets import conservative_prompt_tokens
from llm_relay.settings import Settings
from tests.conftest import RelayFactory, Upstream
from tests.integration.helpers import chat_body, sse_events
from tests.integration.ledger_support import LocalDynamo, local_dynamodb
from tests.integration.test_budgets import assert_settled, content_chunks
from tests.integration.test_limits_relay import new_key, records_of
from tests.servers import serve

PARALLEL = 40
# The one condition an extension write carries and no other write does: its note on the in-flight request item.
EXTENSION_CONDITION = "attribute_exists(pk) AND attribute_not_exists(finished_at)"
MINI_INPUT, MINI_OUTPUT = Decimal("0.15") / 1_000_000, Decimal("0.60") / 1_000_000  # gpt-4o-mini, USD a token


def extension_writes(stores: Stores) -> list[str]:
    """A list that grows by one for every budget extension written through `stores`' client (the relay's own)."""
    seen: list[str] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        if EXTENSION_CONDITION in str(params.get("body")):
            seen.append("extension")

    stores.client.meta.events.register("before-call.dynamodb.TransactWriteItems", note)
    return seen


def fire_in_two_waves(url: str, plain: str, body: dict[str, Any], n: int) -> list[tuple[int, str]]:
    """`n` streamed requests, all in flight together: half at once, the other half as soon as every one of the first
    half has received its first token (when a stream would ask for an extension). (status, body) of each."""
    first_tokens: list[asyncio.Event] = []

    async def one(client: httpx.AsyncClient, first_token: asyncio.Event) -> tuple[int, str]:
        headers = {"authorization": f"Bearer {plain}"}
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            text = ""
            async for part in response.aiter_text():
                text += part
                if '"content":"' in text.replace('"content":""', ""):
                    first_token.set()
        first_token.set()  # refused: nothing to wait for
        return response.status_code, text

    async def waves() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=2 * n)) as client:
            first_tokens.extend(asyncio.Event() for _ in range(n))
            half = [asyncio.create_task(one(client, first_tokens[i])) for i in range(n // 2)]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in first_tokens[: n // 2])), 60)
            rest = [asyncio.create_task(one(client, first_tokens[i])) for i in range(n // 2, n)]
            return list(await asyncio.gather(*half, *rest))

    return asyncio.run(waves())


def test_forty_parallel_requests_that_fit_a_budget_are_all_admitted(make_relay: RelayFactory, stores: Stores) -> None:
    # GIVEN a $0.01 daily budget and requests with max_tokens 100 (each reserves its prompt and its 100 tokens, about
    # $0.0000621: $0.0025 for 40), streaming for about 2 s
    relay = make_relay()
    plain, key = new_key(stores, daily_budget_usd="0.01")
    extensions = extension_writes(stores)
    body = chat_body(stream=True, max_tokens=100, mock={"tokens": 100, "chunk_delay_ms": 20, "ttft_ms": 0})
    # WHEN 40 are in flight together, 20 of them arriving while the first 20 stream their first tokens
    answers = fire_in_two_waves(relay.url, plain, body, PARALLEL)
    # THEN every one is admitted and streams its 100 tokens to the end
    assert [status for status, _ in answers] == [200] * PARALLEL, [
        text[:300] for status, text in answers if status != 200
    ]
    for _, text in answers:
        events = sse_events(text)
        assert events[-1] == "[DONE]" and content_chunks([json.loads(e) for e in events[:-1]]) == 100
    # AND none asked for an extension: admission had reserved all that max_tokens allows
    assert extensions == []
    # AND every one is recorded, the spend is within the budget, and nothing stays reserved
    records = records_of(stores, key.key_id, PARALLEL)
    assert sorted(r.termination_reason for r in records) == ["stop"] * PARALLEL
    assert 0 < assert_settled(stores, key.key_id, records) <= Decimal("0.01")


@pytest.fixture
def slow_dynamo() -> Iterator[LocalDynamo]:
    """The local DynamoDB in its own process, so a test can freeze it (SIGSTOP) to make every call slow."""
    with local_dynamodb() as dynamo:
        yield dynamo


def test_a_pending_extension_does_not_delay_the_final_frame_when_dynamodb_is_slow(
    slow_dynamo: LocalDynamo, upstream: Upstream
) -> None:
    # GIVEN a relay on its own local DynamoDB, increments of 50 tokens, the production admission timeout (2 s, what
    # bounds an extension's write), and a budgeted key
    stores = slow_dynamo.stores()
    settings = Settings(
        upstream_url=upstream.url,
        dynamodb_endpoint=slow_dynamo.endpoint,
        table_name=stores.table_name,
        budget_increment_tokens=50,
        admission_timeout_s=2.0,
        finalize_timeout_s=15.0,
    )
    plain, key = new_key(stores, daily_budget_usd="1")
    body = chat_body(stream=True, mock={"tokens": 45, "chunk_delay_ms": 30, "ttft_ms": 0})
    last_token_at = done_at = 0.0
    tokens = 0
    with (
        serve(create_app(settings, stores=stores)) as base,
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {plain}"}
        ) as response,
    ):
        try:
            for line in response.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    tokens += 1
                    last_token_at = time.monotonic()
                    if tokens == 10:
                        # WHEN DynamoDB stops answering before the extension asked for at the 38th token
                        slow_dynamo.freeze()
                elif line == "data: [DONE]":
                    done_at = time.monotonic()
                    slow_dynamo.thaw()
        finally:
            slow_dynamo.thaw()
    # THEN the 45 tokens and the final frame arrived, the frame right after the last token: the extension still
    # pending (it waits up to 2 s for DynamoDB) does not hold it back
    assert tokens == 45 and done_at > 0
    assert done_at - last_token_at < 1.0, f"the final frame came {done_at - last_token_at:.2f}s after the last token"
    # AND finalization waited for the write's answer: the request is recorded and nothing stays reserved
    records = records_of(stores, key.key_id, 1)
    assert [(r.termination_reason, r.completion_tokens) for r in records] == [("stop", 45)]
    assert assert_settled(stores, key.key_id, records) > 0


def test_a_very_short_prompt_is_reserved_at_least_at_what_its_upstream_bills(
    make_relay: RelayFactory, stores: Stores
) -> None:
    # GIVEN a budgeted key, and the shortest of prompts with max_tokens 1
    relay = make_relay()
    plain, key = new_key(stores, daily_budget_usd="1")
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 1, "mock": {"tokens": 1, "ttft_ms": 0}}
    # WHEN it is answered
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(plain))
    assert response.status_code == 200
    # THEN admission reserved its prompt as the estimate says: its text and the chat template's framing of one
    # message and the reply (11 tokens: what Llama 3's template bills for "hi"; OpenAI's bills 8)
    item = stores.client.get_item(
        TableName=stores.table_name, Key={"pk": {"S": f"REQ#{response.headers['x-request-id']}"}, "sk": {"S": "REQ"}}
    )["Item"]
    reserved_prompt = (Decimal(item["reserved_usd"]["N"]) - 1 * MINI_OUTPUT) / MINI_INPUT
    assert reserved_prompt == conservative_prompt_tokens(messages) >= 11
    # AND at least what the upstream billed for it (the mock counts the text alone), so the settled cost never
    # exceeds what was reserved
    (record,) = records_of(stores, key.key_id, 1)
    assert record.usage_source == "upstream" and reserved_prompt >= record.prompt_tokens
    assert record.cost_usd is not None and record.cost_usd <= Decimal(item["reserved_usd"]["N"])
