"""Budgets that cannot be overspent, end to end against the local DynamoDB: parallel requests through one and
two relay processes (`make dev`'s entry point), a stream cut when its extension is refused (SSE, NDJSON and
stream: false), unpriced models under both policies, and no reservation left behind by a finished stream."""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest

from llm_relay.dynamo import Stores, release_ops
from llm_relay.limits.rules import day_of, month_of
from llm_relay.usage import UsageRecord
from tests.conftest import RelayFactory, Upstream
from tests.integration.devserver_support import DevServer, dev_server
from tests.integration.helpers import chat_body, ndjson_lines, sse_events
from tests.integration.test_limits_relay import new_key, records_of

PARALLEL = 40
FAST = {"tokens": 20, "chunk_delay_ms": 5, "ttft_ms": 0}
ENDLESS = {"tokens": 1000, "chunk_delay_ms": 1, "ttft_ms": 0}


@contextmanager
def relay_processes(
    count: int, stores: Stores, upstream: Upstream, moto_endpoint: str, **env: str
) -> Iterator[list[DevServer]]:
    """`count` relay processes (what `make dev` runs) sharing the test's local DynamoDB table and mock upstream."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                dev_server(
                    RELAY_DYNAMODB_ENDPOINT=moto_endpoint,
                    RELAY_TABLE_NAME=stores.table_name,
                    RELAY_UPSTREAM_URL=upstream.url,
                    **env,
                )
            )
            for _ in range(count)
        ]


def fire(urls: list[str], plain: str, body: dict[str, Any], n: int) -> list[httpx.Response]:
    """`n` streamed requests at once, spread over the relays at `urls` (the base URLs)."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=2 * n)) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        f"{urls[i % len(urls)]}/v1/chat/completions",
                        json=body,
                        headers={"authorization": f"Bearer {plain}"},
                    )
                    for i in range(n)
                ]
            )

    return asyncio.run(burst())


def content_chunks(chunks: list[dict[str, Any]]) -> int:
    """The chunks that carried a token to the client."""
    return sum(1 for chunk in chunks if chunk["choices"] and chunk["choices"][0]["delta"].get("content"))


def ledger(
    stores: Stores, key_id: str, shards: int = 1, at: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The key's day and month spend items for the periods holding `at` (epoch seconds, now by default): a request
    is booked to the day and month it started in, so a test whose request may cross midnight passes its start."""
    at = time.time() if at is None else at
    return stores.usage.spend(key_id, "D#" + day_of(at), shards), stores.usage.spend(
        key_id, "M#" + month_of(at), shards
    )


def assert_settled(stores: Stores, key_id: str, records: list[UsageRecord], shards: int = 1) -> Decimal:
    """No reservation is left on the days and months the key's records were booked to (each the period its
    request started in): committed == spent == the sum of the costs booked there. Returns the records' total."""
    total = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
    booked: dict[str, Decimal] = {}
    for at, cost in [(r.started_epoch, r.cost_usd or Decimal(0)) for r in records] or [(time.time(), Decimal(0))]:
        for period in ("D#" + day_of(at), "M#" + month_of(at)):
            booked[period] = booked.get(period, Decimal(0)) + cost
    for period, cost in booked.items():
        spend = stores.usage.spend(key_id, period, shards)
        assert spend.get("reserved_usd", 0) == 0, period
        assert spend.get("committed_usd", 0) == spend.get("cost_usd", 0) == cost, period
    return total


def assert_budget_held(
    responses: list[httpx.Response], stores: Stores, key_id: str, budget: Decimal, shards: int = 1
) -> None:
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    # THEN some were admitted, and every other one got 429 budget_exceeded with a Retry-After to the next day
    assert ok and refused
    for response in refused:
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "budget_exceeded"
        assert 0 < int(response.headers["retry-after"]) <= 86400
    for response in ok:
        assert sse_events(response.text)[-1] == "[DONE]"
    # AND the recorded spend stays within the budget (+5% allowed for prompt-estimate error; it is conservative)
    records = records_of(stores, key_id, len(responses), shards=shards)
    spent = [r for r in records if r.termination_reason == "stop"]
    assert len(spent) == len(ok)
    total = assert_settled(stores, key_id, records, shards)
    assert 0 < total <= budget * Decimal("1.05")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("processes", "shards"),
    [(1, 1), (2, 1), (2, 4)],
    ids=["one relay process", "two relay processes", "two relay processes, a key of four shards"],
)
def test_forty_parallel_requests_never_spend_past_the_budget(
    stores: Stores, upstream: Upstream, moto_endpoint: str, processes: int, shards: int
) -> None:
    # GIVEN a key with a $0.0001 daily budget and no concurrency limit, served by one or two relay processes; its spend
    # on one item, or over four (each shard taking blocks of the budget from the key's own item as it needs them)
    budget = Decimal("0.0001")
    plain, key = new_key(stores, daily_budget_usd=str(budget), shards=str(shards))
    with relay_processes(processes, stores, upstream, moto_endpoint) as relays:
        # WHEN 40 streamed requests with max_tokens 20 arrive at once, spread over the processes
        responses = fire([r.url for r in relays], plain, chat_body(stream=True, max_tokens=20, mock=FAST), PARALLEL)
    # THEN the budget holds (across both processes, with two)
    assert_budget_held(responses, stores, key.key_id, budget, shards)


def beyond_reservation(record: UsageRecord, reserved: int) -> Decimal:
    """What the completion tokens a record counts past the reserved ones cost (gpt-4o-mini, $0.60/M): generated by
    the upstream with the chunk that found the reservation used up, billed by the provider, never sent."""
    return max(0, record.completion_tokens - reserved) * Decimal("0.60") / 1_000_000


def budget_of_three_increments(stores: Stores) -> tuple[str, Any, Decimal]:
    """A key whose budget covers the first reservation (14 prompt tokens at $0.15/M + 50 completion tokens at
    $0.60/M = $0.0000321) and two extensions of 50 tokens ($0.00003 each), not a third: 150 tokens in all."""
    budget = Decimal("0.0001")
    plain, key = new_key(stores, daily_budget_usd=str(budget), monthly_budget_usd="1")
    return plain, key, budget


def test_a_stream_without_max_tokens_ends_with_budget_exceeded_when_an_extension_is_refused(
    make_relay: RelayFactory, stores: Stores, upstream: Upstream
) -> None:
    # GIVEN increments of 50 tokens and a key whose budget covers three of them
    relay = make_relay(budget_increment_tokens=50)
    plain, key, budget = budget_of_three_increments(stores)
    # WHEN it streams an answer of 1000 tokens without max_tokens (SSE)
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{relay.url}/v1/chat/completions",
            json=chat_body(stream=True, mock=ENDLESS),
            headers=relay.headers(plain),
        )
    # THEN it ends mid-way with the budget_exceeded terminal event, after exactly the reserved 150 tokens
    events = sse_events(response.text)
    assert response.status_code == 200
    error = json.loads(events[-1])["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "rate_limit_error")
    assert "[DONE]" not in events
    assert content_chunks([json.loads(e) for e in events[:-1]]) == 150
    # AND its record says so, counting the chunk that found the reservation used up (and any the same read held):
    # the upstream generated them, though the client never saw them
    (record,) = records_of(stores, key.key_id, 1)
    assert record.termination_reason == "budget_exceeded" and record.completion_tokens > 150
    # AND the recorded spend stays within the budget but for those, with no reservation left
    assert assert_settled(stores, key.key_id, [record]) <= budget + beyond_reservation(record, 150)
    # AND the upstream was closed at once (it did not stream its 1000 tokens)
    assert upstream.state.requests[response.headers["x-request-id"]].chunks_sent < 1000


def test_ndjson_and_stream_false_are_cut_by_the_budget_too(
    make_relay: RelayFactory, stores: Stores, upstream: Upstream
) -> None:
    # GIVEN increments of 50 tokens and two keys whose budgets cover three of them
    relay = make_relay(budget_increment_tokens=50)
    plain_a, key_a, budget = budget_of_three_increments(stores)
    plain_b, key_b, _ = budget_of_three_increments(stores)
    with httpx.Client(timeout=30) as client:
        # WHEN one streams NDJSON and the other asks for one JSON body
        ndjson = client.post(
            f"{relay.url}/api/v1/chat/stream", json=chat_body(mock=ENDLESS), headers=relay.headers(plain_a)
        )
        whole = client.post(
            f"{relay.url}/v1/chat/completions", json=chat_body(mock=ENDLESS), headers=relay.headers(plain_b)
        )
    # THEN NDJSON ends with an error line budget_exceeded after the reserved tokens
    lines = ndjson_lines(ndjson.text)
    assert lines[-1]["error"]["code"] == "budget_exceeded"
    assert content_chunks(lines[:-1]) == 150
    # AND stream: false gets 429 budget_exceeded
    assert whole.status_code == 429
    assert whole.json()["error"]["code"] == "budget_exceeded"
    # AND both have their usage recorded (the refused chunk too), within budget but for what the upstream generated
    # past the reservation, with no reservation left
    for key in (key_a, key_b):
        (record,) = records_of(stores, key.key_id, 1)
        assert record.termination_reason == "budget_exceeded" and record.completion_tokens > 150
        assert assert_settled(stores, key.key_id, [record]) <= budget + beyond_reservation(record, 150)


def test_a_finished_stream_leaves_no_reservation_behind(make_relay: RelayFactory, stores: Stores) -> None:
    # GIVEN a budgeted key, and requests that reserve more than they use (no max_tokens: one increment)
    relay = make_relay()
    plain, key = new_key(stores, daily_budget_usd="1", monthly_budget_usd="10")
    with httpx.Client(timeout=30) as client:
        for body in (chat_body(stream=True, mock=FAST), chat_body(mock=FAST), chat_body(max_tokens=5, mock=FAST)):
            # WHEN each runs to its end
            assert client.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(plain)).is_success
    # THEN day and month spend equal the sum of the usage records' costs, and nothing stays reserved
    records = records_of(stores, key.key_id, 3)
    assert len(records) == 3
    assert assert_settled(stores, key.key_id, records) > 0


def test_an_unpriced_model_is_refused_for_a_budgeted_key_and_allowed_for_others(make_relay: RelayFactory) -> None:
    # GIVEN the default policy (refuse), a budgeted key and a key without a budget
    relay = make_relay()
    budgeted, _ = new_key(relay.stores, daily_budget_usd="1")
    free, free_key = new_key(relay.stores)
    body = chat_body(model="my-own-llama", mock=FAST)
    with httpx.Client(timeout=30) as client:
        # WHEN each asks for a model without a price
        refused = client.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(budgeted))
        allowed = client.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(free))
    # THEN the budgeted key gets 400 model_not_priced, with a message that says how to add a price
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_priced", "model")
    assert "RELAY_PRICES_JSON" in error["message"]
    # AND the key without a budget is served and recorded with cost unknown
    assert allowed.status_code == 200
    (record,) = records_of(relay.stores, free_key.key_id, 1)
    assert record.cost_usd is None


def test_unpriced_models_allow_admits_a_budgeted_key_and_records_it(make_relay: RelayFactory) -> None:
    # GIVEN RELAY_UNPRICED_MODELS=allow and a budgeted key
    relay = make_relay(unpriced_models="allow")
    plain, key = new_key(relay.stores, daily_budget_usd="1")
    # WHEN it asks for a model without a price
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{relay.url}/v1/chat/completions",
            json=chat_body(model="my-own-llama", mock=FAST),
            headers=relay.headers(plain),
        )
    # THEN it is admitted, and recorded with cost unknown and counted as unpriced
    assert response.status_code == 200
    (record,) = records_of(relay.stores, key.key_id, 1)
    assert (record.cost_usd, record.completion_tokens) == (None, 20)
    day, _ = ledger(relay.stores, key.key_id, at=record.started_epoch)
    assert day["unpriced_requests"] == 1
    assert day.get("reserved_usd", 0) == 0


def test_an_extension_is_one_write_per_increment_and_the_request_item_holds_the_reservation(
    make_relay: RelayFactory, stores: Stores, upstream: Upstream
) -> None:
    # GIVEN increments of 50 tokens, a key with an ample budget, and every DynamoDB call recorded
    relay = make_relay(budget_increment_tokens=50)
    plain, key = new_key(stores, daily_budget_usd="1")
    calls: list[str] = []
    stores.client.meta.events.register("before-call.dynamodb.*", lambda model, **kw: calls.append(model.name))
    # WHEN a 200-token answer streams without max_tokens
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{relay.url}/v1/chat/completions",
            json=chat_body(stream=True, mock={"tokens": 200, "chunk_delay_ms": 1, "ttft_ms": 0}),
            headers=relay.headers(plain),
        )
    assert sse_events(response.text)[-1] == "[DONE]"
    records_of(stores, key.key_id, 1)
    # THEN the writes were: admission, one extension per increment past the first (at 38, 88, 138, 188 tokens:
    # 50 -> 250 reserved), and settlement; besides them only reads (the key, the cancel poller, the test's own)
    writes = [name for name in calls if name not in ("GetItem", "BatchGetItem", "Query")]
    assert writes == ["TransactWriteItems"] * 6
    # AND the in-flight item holds the whole reservation (what a reconciler would release): admission's
    # 14 prompt tokens at $0.15/M and 50 completion tokens at $0.60/M, then 4 x 50 tokens
    item = stores.client.get_item(
        TableName=stores.table_name, Key={"pk": {"S": f"REQ#{response.headers['x-request-id']}"}, "sk": {"S": "REQ"}}
    )["Item"]
    assert Decimal(item["reserved_usd"]["N"]) == Decimal("0.0000021") + 5 * Decimal("0.00003")
    # AND settlement left nothing reserved
    assert_settled(stores, key.key_id, records_of(stores, key.key_id, 1))


def test_a_killed_relay_keeps_its_reservation_until_the_reconciler_releases_it(
    stores: Stores, upstream: Upstream, moto_endpoint: str
) -> None:
    # GIVEN a budgeted key streaming through a relay process, at increments of 50 tokens
    plain, key = new_key(stores, daily_budget_usd="1")
    with (
        relay_processes(1, stores, upstream, moto_endpoint, RELAY_BUDGET_INCREMENT_TOKENS="50") as (relay,),
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{relay.url}/v1/chat/completions",
            json=chat_body(stream=True, mock={"tokens": 1000, "chunk_delay_ms": 20, "ttft_ms": 0}),
            headers={"authorization": f"Bearer {plain}"},
        ) as stream,
    ):
        request_id = stream.headers["x-request-id"]
        tokens = 0
        for line in stream.iter_lines():
            tokens += '"content":"' in line
            if tokens == 100:  # past the extensions at 38 and 88 tokens: 150 reserved
                break
        # WHEN the process is killed mid-stream: no finalization
        os.kill(relay.pid, signal.SIGKILL)
    # THEN the day's spend still holds the request's reservation, exactly what its in-flight item records
    item = stores.client.get_item(
        TableName=stores.table_name, Key={"pk": {"S": f"REQ#{request_id}"}, "sk": {"S": "REQ"}}
    )["Item"]
    reserved = Decimal(item["reserved_usd"]["N"])
    started = calendar.timegm(time.strptime(item["started_at"]["S"][:19], "%Y-%m-%dT%H:%M:%S"))
    day, month = ledger(stores, key.key_id, at=started)
    assert reserved > Decimal("0.00003") and day["reserved_usd"] == month["reserved_usd"] == reserved
    assert day["committed_usd"] == reserved and "cost_usd" not in day
    # WHEN a reconciler releases it, settling an estimated cost, with the ops the relay exposes
    cost = Decimal("0.00002")
    stores.client.transact_write_items(
        TransactItems=release_ops(stores.table_name, key.key_id, started, reserved, cost)  # type: ignore[arg-type]
    )
    # THEN nothing stays reserved and the budget counts the settled cost
    for spend in ledger(stores, key.key_id, at=started):
        assert (spend["reserved_usd"], spend["committed_usd"]) == (0, cost)
