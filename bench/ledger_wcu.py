"""Write units a request costs, by the ledger's design, at 1, 100 and 1,000 concurrent streams on one key
(`python -m bench.ledger_wcu`, results in bench/results/ledger_wcu.json).

Against the local DynamoDB (moto, in this process): a key with every limit gets N - 1 streams in flight, then one
more request is admitted, has its lease renewed (with a checkpoint) and is settled. Every item those three writes
touch is read before and after, and its write units computed from DynamoDB's item size rules (attribute names plus
values; a write costs 1 WCU per started KB of the larger of the item before and after, doubled inside a
transaction, ConditionCheck counted like a write; an index entry write costs 1 WCU per KB of the projected entry,
2 when its key changes). Moto does not report consumed capacity, so the units are computed, not measured.

What must hold: the per-request cost is the same at 1 and at 1,000 streams (no item grows with the streams in
flight), and the units on the key's own partition give the per-key ceiling in docs/limits.md ("What is guaranteed").
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from llm_relay.chat_request import ChatRequest
from llm_relay.dynamo import Stores, layout, make_client
from llm_relay.keys import ApiKey, generate_key_id
from llm_relay.ledger import Checkpoint
from llm_relay.limits import Limiter
from llm_relay.metering import Usage
from llm_relay.outcome import Prompt, RequestContext, StreamOutcome
from llm_relay.pricing import PriceTable
from llm_relay.reconciler import Reconciler
from llm_relay.settings import Settings
from llm_relay.termination import TerminationReason
from llm_relay_dev.local_dynamodb import MotoServer
from llm_relay_dev.table import create_table

LIMITS = {"rpm": 10**6, "tpm": 10**9, "max_concurrent": 10**5, "daily_budget_usd": 10**4, "monthly_budget_usd": 10**5}
INDEXES = {"gsi1": ("gsi1pk", "gsi1sk"), "open": ("open_shard", "lease_until"), "leases": ("lease_key", "lease_until")}
KEYS_ONLY = {"open", "leases"}
RESULTS = Path(__file__).parent / "results" / "ledger_wcu.json"


def context(key: ApiKey, request_id: str, *, max_tokens: int | None = None) -> RequestContext:
    """A chat request of `key`, as the pipeline would have parsed it."""
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    chat = ChatRequest.model_validate(body)
    now = time.time()
    return RequestContext(request_id, key, chat, Prompt.of(chat), "sse", time.monotonic(), now)


def value_size(value: Any) -> int:
    """DynamoDB's size of one attribute value (bytes)."""
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, int | float | Decimal):
        digits = len(str(abs(Decimal(value))).replace(".", "").lstrip("0")) or 1
        return math.ceil(digits / 2) + 1
    if isinstance(value, dict):
        return 3 + sum(len(k.encode()) + value_size(v) + 1 for k, v in value.items())
    if isinstance(value, list | set | frozenset):
        return 3 + sum(value_size(v) + 1 for v in value)
    raise TypeError(type(value))


def item_size(item: dict[str, Any] | None) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in (item or {}).items())


def write_units(before: dict[str, Any] | None, after: dict[str, Any] | None, *, transactional: bool) -> int:
    units = math.ceil(max(item_size(before), item_size(after), 1) / 1024)
    return units * (2 if transactional else 1)


def index_units(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, int]:
    """Index entry writes of one item write: 0 if the item is not (and was not) in the index."""
    out = {}
    for name, attrs in INDEXES.items():
        old = tuple((before or {}).get(a) for a in attrs)
        new = tuple((after or {}).get(a) for a in attrs)
        was, now = None not in old, None not in new
        if not was and not now:
            continue
        if was and now and old == new and (name in KEYS_ONLY or before == after):
            continue  # nothing projected changed: no index write
        entry = {a: (after or before or {}).get(a) for a in ("pk", "sk", *attrs)}
        size = item_size(entry if name in KEYS_ONLY else (after or before))
        out[name] = math.ceil(size / 1024) * (2 if was and now and old != new else 1)
    return out


class Recorder:
    """Reads every item a write touches before and after it, through a botocore event hook."""

    def __init__(self, stores: Stores, reader: Any) -> None:
        self.stores = stores
        self.reader = reader  # a second client: reads from the hook must not re-enter it
        self.keys: list[tuple[dict[str, Any], bool]] = []  # (key, transactional)

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "TransactWriteItems":
            for op in params["TransactItems"]:
                (body,) = op.values()
                key = body.get("Key") or {k: body["Item"][k] for k in ("pk", "sk")}
                self.keys.append((layout.deserialize(key), True))
        elif model.name in ("PutItem", "UpdateItem"):
            key = params.get("Key") or {k: params["Item"][k] for k in ("pk", "sk")}
            self.keys.append((layout.deserialize(key), False))

    def read(self, key: dict[str, Any]) -> dict[str, Any] | None:
        out = self.reader.get_item(TableName=self.stores.table_name, Key=layout.serialize(key), ConsistentRead=True)
        raw = out.get("Item")
        return layout.deserialize(raw) if raw else None


def measure(recorder: Recorder, write: Any, partition: str) -> dict[str, int]:
    """Run `write`; its table units, those on the key's partition, and its index units."""
    recorder.keys.clear()
    snapshots: dict[str, dict[str, Any] | None] = {}

    def before_send(params: dict[str, Any], model: Any, **kw: Any) -> None:
        recorder(params, model)
        for key, _ in recorder.keys:
            snapshots.setdefault(json.dumps(key, sort_keys=True), recorder.read(key))

    events = recorder.stores.client.meta.events
    events.register("provide-client-params.dynamodb", before_send)
    try:
        write()
    finally:
        events.unregister("provide-client-params.dynamodb", before_send)
    table = on_key = index = 0
    for key, transactional in recorder.keys:
        before, after = snapshots[json.dumps(key, sort_keys=True)], recorder.read(key)
        units = write_units(before, after, transactional=transactional)
        table += units
        on_key += units if key["pk"] == partition else 0
        index += sum(index_units(before, after).values())
    return {"table": table, "key_partition": on_key, "index": index}


def run_at(endpoint: str, streams: int) -> dict[str, Any]:
    table = f"wcu-{uuid.uuid4().hex[:8]}"
    client = make_client(endpoint, "us-east-1")
    create_table(client, table)
    stores = Stores.create(table, client)
    settings = Settings(table_name=table, upstream_url="http://unused/v1")
    prices = PriceTable.load()
    reconciler = Reconciler(stores, prices, settings.usage_retention_days)
    limiter = Limiter(stores, settings, pricer=prices, reconciler=reconciler)
    key = ApiKey(key_id=generate_key_id(), name="bench", limits={k: Decimal(v) for k, v in LIMITS.items()})

    async def fill() -> None:
        for i in range(streams - 1):
            await limiter.admit(context(key, f"req_fill_{i}"))

    anyio.run(fill)
    recorder = Recorder(stores, make_client(endpoint, "us-east-1"))
    ctx = context(key, f"req_{uuid.uuid4().hex}", max_tokens=200)
    partition = layout.partition(key.key_id)
    tickets: list[Any] = []
    admission = measure(recorder, lambda: tickets.append(anyio.run(limiter.admit, ctx)), partition)
    # a renewal a third of a 60 s lease later: the lease expiry (both indexes' sort key) moves
    checkpoint = Checkpoint(12, 180, at_epoch=Decimal("1.5"))
    renewal = measure(
        recorder, lambda: stores.requests.renew(int(time.time()) + 80, {ctx.request_id: checkpoint}), partition
    )
    done = replace(ctx, ticket=tickets[0])
    outcome = StreamOutcome(TerminationReason.STOP, Usage(12, 180), 0.2, 0.02, 4.0, 180, cost_usd=Decimal("0.0001"))
    settlement = measure(recorder, lambda: anyio.run(limiter.finalize, done, outcome), partition)
    conc = stores.limits.read_counters(key.key_id, time.time())["concurrency"]
    return {
        "streams": streams,
        "admission": admission,
        "renewal": renewal,
        "settlement": settlement,
        "conc_item_bytes": item_size(conc),
    }


def main() -> None:
    rows = []
    with MotoServer() as endpoint:
        for streams in (1, 100, 1000):
            rows.append(run_at(endpoint, streams))
    print(f"{'streams':>8} {'admission':>22} {'renewal':>22} {'settlement':>22} {'CONC item':>10}")
    print(f"{'':>8} {'table/key part./index':>22} {'table/key part./index':>22} {'table/key part./index':>22}")
    for row in rows:
        cells = [
            "{table}/{key_partition}/{index}".format(**row[part]) for part in ("admission", "renewal", "settlement")
        ]
        print(f"{row['streams']:>8} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} {row['conc_item_bytes']:>8} B")
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
