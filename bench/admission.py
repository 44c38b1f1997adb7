"""Admission cost: what per-key limits add before the upstream call (`python -m bench.admission`).

1. The DynamoDB calls alone, against the local moto server: the admission TransactWriteItems with every limit
   set, beside the PutItem an unlimited key costs and a GetItem for scale.
2. Time to first token through a real relay (mock upstream answering at once), for a key without limits and a
   key with every limit, measured side by side in one run.

moto is much slower than DynamoDB per call (it deep-copies the table for each transaction), so read the
differences, not the absolute numbers, as what DynamoDB would cost: one round trip either way.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx

from llm_relay.app import create_app
from llm_relay.dynamo import Stores, make_client, request_item
from llm_relay.dynamo.layout import serialize
from llm_relay.keys import ApiKey, generate_key, generate_key_id, hash_key
from llm_relay.limits.rules import AdmissionPlan, Limits
from llm_relay.settings import Settings
from llm_relay_dev.local_dynamodb import MotoServer
from llm_relay_dev.mock_upstream import create_mock_app
from llm_relay_dev.serving import serve_in_thread
from llm_relay_dev.table import create_table

ALL_LIMITS = {"rpm": 100000, "tpm": 10**9, "max_concurrent": 1000, "daily_budget_usd": 1000, "monthly_budget_usd": 1000}


def _stats(name: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[int(len(ms) * 0.95) - 1]
    print(f"  {name:<44} p50 {statistics.median(ms):6.2f} ms   p95 {p95:6.2f} ms   (n={len(ms)})")


def _time(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def store_calls(endpoint: str, n: int) -> None:
    table = f"bench-{uuid.uuid4().hex[:8]}"
    client = make_client(endpoint, "us-east-1")
    create_table(client, table)
    stores = Stores.create(table, client)
    limits = Limits(
        rpm=10**6, tpm=10**9, max_concurrent=10**6, daily_budget_usd=Decimal(1000), monthly_budget_usd=Decimal(1000)
    )
    now = time.time()

    def admit() -> None:
        rid = "req_" + uuid.uuid4().hex
        plan = AdmissionPlan(rid, "rk_bench", limits, now, 100, 900.0)
        assert stores.limits.admit(plan, request_item(rid, "rk_bench", "gpt-4o-mini", 3600)).admitted

    def put() -> None:
        rid = "req_" + uuid.uuid4().hex
        stores.requests.put(request_item(rid, "rk_bench", "gpt-4o-mini", 3600))

    def get() -> None:
        client.get_item(TableName=table, Key=serialize({"pk": "KEY#rk_bench", "sk": "CONC"}))

    print("DynamoDB calls against moto (sequential):")
    _stats("GetItem (scale)", _time(get, n))
    _stats("PutItem REQ# (key without limits)", _time(put, n))
    _stats("TransactWriteItems, every limit (admission)", _time(admit, n))


def relay_ttft(endpoint: str, n: int) -> None:
    table = f"bench-{uuid.uuid4().hex[:8]}"
    client = make_client(endpoint, "us-east-1")
    create_table(client, table)
    stores = Stores.create(table, client)
    keys = {}
    for label, limits in (("no limits", {}), ("every limit", ALL_LIMITS)):
        plain = generate_key()
        key = ApiKey(generate_key_id(), label, limits={k: Decimal(v) for k, v in limits.items()})
        stores.keys.put(key, hash_key(plain))
        keys[label] = plain
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": {"tokens": 2, "chunk_delay_ms": 0, "ttft_ms": 0},
    }
    with serve_in_thread(create_mock_app()) as upstream_base:
        settings = Settings(upstream_url=f"{upstream_base}/v1", dynamodb_endpoint=endpoint, table_name=table)
        with (
            serve_in_thread(create_app(settings, stores=stores), lifespan="on") as base,
            httpx.Client(timeout=30) as http,
        ):
            samples: dict[str, list[float]] = {label: [] for label in keys}
            for i in range(n * 2 + 10):
                label = list(keys)[i % 2]
                start = time.perf_counter()
                with http.stream(
                    "POST", f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {keys[label]}"}
                ) as response:
                    first_token: float | None = None
                    for line in response.iter_lines():
                        if first_token is None and '"content":"' in line and '"content":""' not in line:
                            first_token = time.perf_counter() - start
                    if i >= 10 and first_token is not None:  # the first 10: warm-up (auth cache, connections)
                        samples[label].append(first_token)
    print("Time to first token through the relay (mock upstream, ttft 0; both keys interleaved):")
    for label, values in samples.items():
        _stats(f"key with {label}", values)
    diff = statistics.median(samples["every limit"]) - statistics.median(samples["no limits"])
    print(f"  median difference: {diff * 1000:.2f} ms")


def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    n = int(os.environ.get("BENCH_N", "200"))
    with MotoServer() as endpoint:
        store_calls(endpoint, n)
        relay_ttft(endpoint, n // 2)


if __name__ == "__main__":
    main()
