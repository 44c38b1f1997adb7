"""What budget reservations cost on the hot path (`python -m bench.budgets`).

1. DynamoDB calls against the local moto server: the admission transaction with every limit but no budget, the
   same with both budgets (the reservation is two more Update parts in the same transaction: no extra round trip),
   and one extension (the stream's one conditional write per increment).
2. Streams through a real relay (mock upstream, 1000 tokens, 1 ms apart): a key without a budget, a budgeted key
   at the default increment (1024: no extension for 1000 tokens) and at increments of 50 (20 extensions), side by
   side: time to first token, time to the end, the longest gap between two tokens, and DynamoDB writes per stream.

moto serializes requests and is slower than DynamoDB per call: read the differences.
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
from llm_relay.keys import ApiKey, generate_key, generate_key_id, hash_key
from llm_relay.limits.budgets import BudgetPeriod
from llm_relay.limits.rules import AdmissionPlan, Limits, day_of, month_of
from llm_relay.settings import Settings
from llm_relay_dev.local_dynamodb import MotoServer
from llm_relay_dev.mock_upstream import create_mock_app
from llm_relay_dev.serving import serve_in_thread
from llm_relay_dev.table import create_table

RATES = {"rpm": 10**6, "tpm": 10**9, "max_concurrent": 10**6}


def _ms(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"p50 {statistics.median(ms):7.2f} ms  p95 {ms[max(0, int(len(ms) * 0.95) - 1)]:7.2f} ms"


def _time(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _stores(endpoint: str) -> Stores:
    table = f"bench-{uuid.uuid4().hex[:8]}"
    client = make_client(endpoint, "us-east-1")
    create_table(client, table)
    return Stores.create(table, client)


def store_calls(endpoint: str, n: int) -> None:
    stores = _stores(endpoint)
    now = time.time()
    rates = Limits(rpm=10**6, tpm=10**9, max_concurrent=10**6)
    budgeted = Limits(
        rpm=10**6, tpm=10**9, max_concurrent=10**6, daily_budget_usd=Decimal(1000), monthly_budget_usd=Decimal(1000)
    )
    periods = (
        BudgetPeriod("daily_budget_usd", f"D#{day_of(now)}", Decimal(1000)),
        BudgetPeriod("monthly_budget_usd", f"M#{month_of(now)}", Decimal(1000)),
    )

    def admit(limits: Limits, reserve_usd: Decimal) -> Callable[[], None]:
        def run() -> None:
            rid = "req_" + uuid.uuid4().hex
            plan = AdmissionPlan(rid, "rk_bench", limits, now, 100, 900.0, reserve_usd=reserve_usd)
            assert stores.limits.admit(plan, request_item(rid, "rk_bench", "gpt-4o-mini", 3600)).admitted

        return run

    def extend() -> None:
        assert stores.budgets.extend("rk_bench", "req_bench", periods, Decimal("0.0006"), 1)

    print("DynamoDB calls against moto (sequential):")
    print(f"  admission, RPM+TPM+concurrency, no budget      {_ms(_time(admit(rates, Decimal(0)), n))}")
    print(f"  admission, the same + both budgets reserved    {_ms(_time(admit(budgeted, Decimal('0.0007')), n))}")
    print(f"  one extension (2 spend items + request item)   {_ms(_time(extend, n))}")


def relay_streams(endpoint: str, n: int) -> None:
    stores = _stores(endpoint)
    keys: dict[str, str] = {}
    for label, limits in (("no budget", RATES), ("budget", {**RATES, "daily_budget_usd": 1000})):
        plain = generate_key()
        key = ApiKey(generate_key_id(), label, limits={k: Decimal(v) for k, v in limits.items()})
        stores.keys.put(key, hash_key(plain))
        keys[label] = plain
    writes: list[str] = []
    stores.client.meta.events.register(
        "before-call.dynamodb.*", lambda model, **kw: writes.append(model.name) if "Write" in model.name else None
    )
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": {"tokens": 1000, "chunk_delay_ms": 1, "ttft_ms": 0},
    }
    print("Streams of 1000 tokens, 1 ms apart, through one relay (sequential, after warm-up):")
    with serve_in_thread(create_mock_app()) as upstream_base:
        for increment, label in ((1024, "no budget"), (1024, "budget"), (50, "budget")):
            settings = Settings(
                upstream_url=f"{upstream_base}/v1",
                dynamodb_endpoint=endpoint,
                table_name=stores.table_name,
                budget_increment_tokens=increment,
            )
            with (
                serve_in_thread(create_app(settings, stores=stores), lifespan="on") as base,
                httpx.Client(timeout=60) as http,
            ):
                ttft, total, gaps = [], [], []
                writes.clear()
                for i in range(n + 3):
                    t0 = time.perf_counter()
                    last = first = None
                    gap = 0.0
                    headers = {"authorization": f"Bearer {keys[label]}"}
                    with http.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as response:
                        for line in response.iter_lines():
                            if '"content":"' in line:
                                now = time.perf_counter()
                                first = first or now
                                gap = max(gap, now - last) if last else gap
                                last = now
                    if i >= 3 and first is not None:
                        ttft.append(first - t0)
                        total.append(time.perf_counter() - t0)
                        gaps.append(gap)
                per_stream = len(writes) / (n + 3)
                name = f"{label}, increment {increment}" if label == "budget" else label
                print(f"  {name:<24} TTFT {_ms(ttft)} | to end {_ms(total)}")
                print(f"  {'':<24} longest gap between tokens {_ms(gaps)} | DynamoDB writes/stream {per_stream:.1f}")


def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    n = int(os.environ.get("BENCH_N", "100"))
    with MotoServer() as endpoint:
        store_calls(endpoint, n)
        relay_streams(endpoint, max(5, n // 5))


if __name__ == "__main__":
    main()
