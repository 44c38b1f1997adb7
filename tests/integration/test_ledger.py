"""The ledger loses nothing, broken for real: relay processes (`make dev`'s entry point) SIGKILLed with
streams in flight, the local DynamoDB in its own process frozen (SIGSTOP) at admission and at finalization, and
the operator's `llm-relay reconcile` settling what the dead left behind."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

import httpx
import pytest

from llm_relay.dynamo import Stores
from llm_relay.limits.rules import day_of
from llm_relay.metering import Usage
from llm_relay.pricing import PriceTable
from tests.conftest import Upstream
from tests.integration.devserver_support import dev_server
from tests.integration.helpers import chat_body
from tests.integration.ledger_support import local_dynamodb, new_key, reconcile_cli, relay_env
from tests.waiting import wait_until

LONG = {"tokens": 100_000, "chunk_delay_ms": 20, "ttft_ms": 0}
SHORT = {"tokens": 3, "chunk_delay_ms": 0, "ttft_ms": 0}
N = 3


def _records(stores: Stores, key_id: str) -> list[Any]:
    return stores.usage.for_key(key_id, 0, 2e10)


def _long_stream(api: str) -> tuple[str, dict[str, Any]]:
    """(path, body) of a long stream in one of the APIs the relay speaks: each is the same chat stream inside."""
    mock = f"mock: {json.dumps(LONG)}"
    user = [{"role": "user", "content": "Hello there"}]
    if api == "responses":
        return "/v1/responses", {"model": "gpt-4o-mini", "instructions": mock, "input": "Hello there", "stream": True}
    if api == "messages":
        return "/v1/messages", {
            "model": "gpt-4o-mini",
            "max_tokens": 4096,
            "system": mock,
            "messages": user,
            "stream": True,
        }
    return "/v1/chat/completions", chat_body(stream=True, mock=LONG)


def _open_streams(stack: ExitStack, url: str, plain: str, n: int) -> list[str]:
    """Start `n` long streams, each past its first chunk, in turn in each API (chat completions, Responses, Anthropic
    Messages); their request ids. (Their line iterators are kept: a discarded one closes its response, which the
    relay would see as the client going away.)"""
    client = stack.enter_context(httpx.Client(timeout=30))
    ids = []
    readers: list[Any] = []
    for i in range(n):
        path, body = _long_stream(("chat", "responses", "messages")[i % 3])
        stream = stack.enter_context(
            client.stream("POST", f"{url}{path}", json=body, headers={"authorization": f"Bearer {plain}"})
        )
        assert stream.status_code == 200
        readers.append(stream.iter_lines())
        next(readers[-1])
        ids.append(stream.headers["x-request-id"])
    stack.callback(readers.clear)
    return ids


@pytest.mark.slow
def test_a_killed_relays_streams_are_settled_as_lost_once_and_its_slots_come_back(upstream: Upstream) -> None:
    with local_dynamodb() as dynamo, ExitStack() as streams:
        stores = dynamo.stores()
        plain, key = new_key(stores, max_concurrent=N)
        env = relay_env(dynamo, upstream.url, RELAY_LEASE_S="10")
        with dev_server(**env) as doomed, dev_server(**env) as survivor:
            # GIVEN N streams in flight on one relay process, each checkpointed by a lease renewal at least once
            ids = _open_streams(streams, doomed.url, plain, N)
            apis = dict(zip(ids, ("chat", "responses", "messages"), strict=True))

            def checkpointed() -> bool:
                return all(int((stores.requests.get(rid) or {}).get("cp_completion", 0)) > 0 for rid in ids)

            wait_until(checkpointed, "every stream checkpointed by a renewal", interval=0.2)
            # WHEN the relay process is killed (no finalization)
            os.kill(doomed.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            last = {rid: stores.requests.get(rid) or {} for rid in ids}  # the checkpoints the reconciler finds
            streams.close()
            # AND the operator runs `llm-relay reconcile` (until the leases, no longer renewed, expired)
            settled: list[dict[str, Any]] = []

            def reconciled() -> bool:
                settled.extend(reconcile_cli(dynamo.endpoint)["settled"])
                return {r["request_id"] for r in settled} >= set(ids)

            wait_until(reconciled, "the dead relay's requests reconciled", interval=0.5)
            # THEN the key is admitted N times again, within 20 s of the kill
            with httpx.Client(timeout=30) as client:
                results: list[int] = []

                def one() -> None:
                    body = chat_body(stream=True, mock=SHORT)
                    auth = {"authorization": f"Bearer {plain}"}
                    results.append(
                        client.post(f"{survivor.url}/v1/chat/completions", json=body, headers=auth).status_code
                    )

                threads = [threading.Thread(target=one) for _ in range(N)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            assert results == [200] * N and time.monotonic() - killed_at < 20, time.monotonic() - killed_at
        # AND each of the N has exactly one usage record, `lost`, estimated, charged from its last checkpoint
        records = [r for r in _records(stores, key.key_id) if r.request_id in ids]
        assert sorted(r.request_id for r in records) == sorted(ids)
        prices = PriceTable.load(None)
        for record in records:
            point = last[record.request_id]
            assert (record.termination_reason, record.usage_source) == ("lost", "estimated")
            assert record.api == apis[record.request_id]
            assert record.completion_tokens == int(point["cp_completion"]) > 0
            assert record.cost_usd == prices(record.model, Usage(int(point["cp_prompt"]), record.completion_tokens))
        # AND the day's spend holds them exactly once (with the N short requests after)
        # (each request on the day it started: two days for a run across midnight)
        every = _records(stores, key.key_id)
        days = [stores.usage.spend(key.key_id, "D#" + d) for d in {day_of(r.started_epoch) for r in every}]
        assert sum(day["requests"] for day in days) == 2 * N
        assert sum(r.cost_usd for r in every) == sum(day["cost_usd"] for day in days)


@pytest.mark.slow
def test_dynamodb_frozen_at_admission_answers_503_in_3s_and_leaves_nothing_held(upstream: Upstream) -> None:
    with local_dynamodb() as dynamo:
        stores = dynamodb_stores = dynamo.stores()
        plain, key = new_key(stores, max_concurrent=1, rpm=100, tpm=100_000)
        with dev_server(**relay_env(dynamo, upstream.url)) as relay, httpx.Client(timeout=30) as client:
            url, auth = f"{relay.url}/v1/chat/completions", {"authorization": f"Bearer {plain}"}
            # GIVEN one finished request (the key is in the relay's auth cache) and the counters after it
            assert client.post(url, json=chat_body(mock=SHORT), headers=auth).status_code == 200
            now = time.time()
            wait_until(lambda: _records(stores, key.key_id), "the first request settled", interval=0.1)
            before = dynamodb_stores.limits.read_counters(key.key_id, now)
            # WHEN DynamoDB freezes and a request arrives
            dynamo.freeze()
            try:
                sent = time.monotonic()
                refused = client.post(url, json=chat_body(mock=SHORT), headers=auth)
                elapsed = time.monotonic() - sent
            finally:
                dynamo.thaw()
            # THEN it is answered 503 within 3 s
            assert refused.status_code == 503 and elapsed < 3.0, (refused.status_code, elapsed)
            rid = refused.headers["x-request-id"]

            # AND after DynamoDB thaws, nothing is left held by it: slot, request count, token reservation
            def released() -> bool:
                item = stores.requests.get(rid)
                after = stores.limits.read_counters(key.key_id, now)
                same = all(after[part] == before[part] for part in ("rate", "concurrency"))
                return same and (item is None or "finished_at" in item)

            wait_until(released, "what the refused admission took given back", interval=0.2)
            assert stores.requests.get(rid) is not None  # released: a finished item, so a late copy takes nothing
            # AND the key is admitted again (max_concurrent 1)
            assert client.post(url, json=chat_body(mock=SHORT), headers=auth).status_code == 200


@pytest.mark.slow
def test_dynamodb_frozen_at_finalization_closes_the_body_in_5s_and_is_settled_once(upstream: Upstream) -> None:
    with local_dynamodb() as dynamo:
        stores = dynamo.stores()
        plain, key = new_key(stores, max_concurrent=2)
        env = relay_env(dynamo, upstream.url, RELAY_LEASE_S="3")
        with dev_server(**env) as relay, httpx.Client(timeout=30) as client:
            body = chat_body(stream=True, mock={"tokens": 40, "chunk_delay_ms": 25, "ttft_ms": 0})
            auth = {"authorization": f"Bearer {plain}"}
            with client.stream("POST", f"{relay.url}/v1/chat/completions", json=body, headers=auth) as stream:
                rid = stream.headers["x-request-id"]
                lines = stream.iter_lines()
                next(lines)
                # GIVEN DynamoDB frozen while the stream runs, so its finalization finds it frozen
                dynamo.freeze()
                try:
                    terminal_at: float | None = None
                    for line in lines:
                        if line == "data: [DONE]":
                            terminal_at = time.monotonic()
                    closed_at = time.monotonic()
                finally:
                    dynamo.thaw()
            # THEN the body closed within 5 s of the terminal frame
            assert terminal_at is not None
            assert closed_at - terminal_at < 5.0, closed_at - terminal_at

            # AND after DynamoDB thaws and the lease expired, a reconcile leaves exactly one record of it
            def finished() -> bool:
                reconcile_cli(dynamo.endpoint)
                return "finished_at" in (stores.requests.get(rid) or {})

            wait_until(finished, "the request settled", interval=0.5)
            reconcile_cli(dynamo.endpoint)
            records = [r for r in _records(stores, key.key_id) if r.request_id == rid]
            assert len(records) == 1
            day = stores.usage.spend(key.key_id, "D#" + day_of(records[0].started_epoch))
            assert day["requests"] == 1 and day["completion_tokens"] == records[0].completion_tokens
            assert stores.limits.read_counters(key.key_id, time.time())["concurrency"]["active"] == Decimal(0)
