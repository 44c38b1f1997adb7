"""Write and read units a request costs on each DynamoDB partition it touches, and the request rates that allows per
key and table-wide (`python -m bench.ledger_wcu [--json]`, results in bench/results/ledger_units.json).

Each request lives its whole life through the relay's own code against the local DynamoDB (moto, in this process):
`Limiter.admit`, one lease renewal with a checkpoint (`RequestStore.renew`, every request in flight in one call, as a
relay process renews its streams), `Limiter.finalize`. Every request is admitted before the first is renewed, so
all of a run's streams are in flight at once: a cost that grew with the streams in flight would show. The server
charges every write and read as DynamoDB would (`llm_relay_dev/throttling.py`: item sizes, write units doubled in a
transaction, index entries, a moved index key as a delete and a put), with capacities too large to throttle, and
its counters by table item and by index partition are what this reads. Moto reports no consumed capacity: the
units are computed from item sizes, not measured by DynamoDB.

Two runs, every limit set on every key: 200 requests of one key (its spots: the per-key ceiling) and 200 requests
over 50 keys (the table-wide spots: the table-wide ceiling). The rules that turn counters into units per request
and ceilings are `bench/units.py`'s. `CHECK` is the same at a small scale, recorded beside the full one for
tests/integration/test_write_units.py to compare against; request and key ids are derived from their numbers, so
a run's shards come out the same every time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from aws_lambda_powertools import Logger

from llm_relay.chat_request import ChatRequest
from llm_relay.dynamo import Stores, layout, make_client
from llm_relay.keys import KEY_ID_PREFIX, ApiKey
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
from llm_relay_dev.throttling import Throttle

from . import units
from .units import Run, Spot, Units

LIMITS = {"rpm": 10**6, "tpm": 10**9, "max_concurrent": 10**5, "daily_budget_usd": 10**4, "monthly_budget_usd": 10**5}
INDEXES = ("gsi1", "open", "leases")  # template.yaml's global secondary indexes
CHARGED = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "GetItem", "BatchGetItem", "Query"}
RESULTS = Path(__file__).parent / "results" / "ledger_units.json"
UNLIMITED = 1e15  # units a second per partition: nothing is throttled, everything is counted


@dataclass(frozen=True)
class Scale:
    key_requests: int  # requests of one key
    shared_requests: int  # requests spread over `shared_keys` keys
    shared_keys: int
    shards: int = 1  # the keys' `shards`: 1, a key as created; more, the layout a hot key uses


FULL = Scale(200, 200, 50)
CHECK = Scale(20, 20, 5)
SHARDS = 48  # for a key past 1,000 new requests a second before DynamoDB splits its partitions (docs/limits.md)
FULL_SHARDED = Scale(200, 200, 50, SHARDS)
CHECK_SHARDED = Scale(64, 20, 5, SHARDS)


def key_id(n: int) -> str:
    return KEY_ID_PREFIX + hashlib.sha256(f"units-key-{n}".encode()).hexdigest()[:12]


def request_id(run: str, n: int) -> str:
    return "req_" + hashlib.sha256(f"units-{run}-{n}".encode()).hexdigest()[:24]


def warm_ids(run: str, shards: int) -> list[str]:
    """Request ids that reach every one of a key's shards once: the requests a key in use has served before, so that
    each shard's day and minute items exist and its first block of the budget is taken (not counted in the run)."""
    ids: dict[int, str] = {}
    for n in range(100 * shards):
        rid = request_id(run, n)
        ids.setdefault(layout.shard_of(rid, shards) if shards > 1 else 0, rid)
        if len(ids) == shards:
            break
    return list(ids.values())


def context(key: ApiKey, rid: str, at: float) -> RequestContext:
    """A chat request of `key` started at `at`, as the pipeline would have parsed it."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 200}
    chat = ChatRequest.model_validate(body)
    return RequestContext(rid, key, chat, Prompt.of(chat), "sse", time.monotonic(), at)


class Operations:
    """The DynamoDB operations a client calls (a botocore hook): any the server does not charge would be missed."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __call__(self, model: Any, **_: Any) -> None:
        self.names.add(str(model.name))


@dataclass(frozen=True)
class Relay:
    """The limits of a relay on one table, with the clock held at `at`."""

    stores: Stores
    limiter: Limiter
    at: float


def relay(client: Any, table: str) -> Relay:
    settings = Settings(table_name=table, upstream_url="http://unused/v1")
    stores = Stores.create(table, client)
    prices = PriceTable.load()
    reconciler = Reconciler(stores, prices, settings.usage_retention_days)
    quiet = Logger(service="bench", level="ERROR")
    at = time.time()  # every request starts, and the limiter's clock stands, at one instant: one busy second's
    limiter = Limiter(stores, settings, pricer=prices, reconciler=reconciler, log=quiet, clock=lambda: at)
    return Relay(stores, limiter, at)


def live(relay: Relay, contexts: list[RequestContext]) -> None:
    """Admit every request, renew every lease once (one call, as a relay process renews its streams), settle each."""

    async def admit_all() -> list[RequestContext]:
        return [replace(ctx, ticket=await relay.limiter.admit(ctx)) for ctx in contexts]

    admitted = anyio.run(admit_all)
    # a renewal a third of a 60 s lease later: the lease expiry (both sparse indexes' sort key) moves
    checkpoint = Checkpoint(12, 180, at_epoch=Decimal("1.5"))
    relay.stores.requests.renew(int(relay.at) + 80, {ctx.request_id: checkpoint for ctx in admitted})
    outcome = StreamOutcome(TerminationReason.STOP, Usage(12, 180), 0.2, 0.02, 4.0, 180, cost_usd=Decimal("0.0001"))

    async def finalize_all() -> None:
        for ctx in admitted:
            await relay.limiter.finalize(ctx, outcome)

    anyio.run(finalize_all)


def lives(endpoint: str, throttle: Throttle, name: str, requests: int, keys: int, shards: int = 1) -> Run:
    """`requests` requests over `keys` keys, each admitted, renewed once and settled; what they consumed. Each key
    has had one request before (not counted), as a key in use has: its day's spend and its minute's rate items
    exist, and a write to them is a change, not a creation."""
    table = f"units-{name}-{uuid.uuid4().hex[:8]}"
    client = make_client(endpoint, "us-east-1")
    create_table(client, table)
    operations = Operations()
    client.meta.events.register("before-call.dynamodb", operations)
    bench = relay(client, table)
    limits = {k: Decimal(v) for k, v in {**LIMITS, "shards": shards}.items()}
    api_keys = [ApiKey(key_id=key_id(n), name="bench", limits=limits) for n in range(keys)]
    # one key's run warms each of its shards; many keys' run one request each (the shared partitions are its rows)
    warm = shards if keys == 1 else 1
    live(
        bench, [context(key, rid, bench.at) for key in api_keys for rid in warm_ids(f"{name}-warm-{key.key_id}", warm)]
    )
    before = consumed(throttle, table)
    contexts = [context(api_keys[n % keys], request_id(name, n), bench.at) for n in range(requests)]
    live(bench, contexts)
    uncharged = operations.names - CHARGED
    if uncharged:
        raise RuntimeError(f"DynamoDB operations the local server does not charge: {sorted(uncharged)}")
    after = consumed(throttle, table)
    counted = {spot: got - before.get(spot, Units()) for spot, got in after.items()}
    ids = [ctx.request_id for ctx in contexts]
    return Run(ids, [k.key_id for k in api_keys], bench.at, {s: u for s, u in counted.items() if u.write or u.read})


def consumed(throttle: Throttle, table: str) -> dict[Spot, Units]:
    """The counters of one table: its items', and its indexes' partitions'."""
    out: dict[Spot, Units] = {}

    def add(spot: Spot, got: Units) -> None:
        out[spot] = out.get(spot, Units()) + got

    for (resource, partition, item), n in throttle.consumed_write_items.items():
        if resource == table:
            add(Spot(units.TABLE, partition, item), Units(write=n))
    for (resource, partition, item), n in throttle.consumed_read_items.items():
        if resource == table:
            add(Spot(units.TABLE, partition, item), Units(read=n))
    prefix = f"{table}/index/"
    for (resource, partition), n in throttle.consumed_write.items():
        if resource.startswith(prefix):
            add(Spot(resource.removeprefix(prefix), partition), Units(write=n))
    for (resource, partition), n in throttle.consumed_read.items():
        if resource.startswith(prefix):
            add(Spot(resource.removeprefix(prefix), partition), Units(read=n))
    return out


def report(endpoint: str, throttle: Throttle, scale: Scale) -> dict[str, Any]:
    """Both runs at `scale`: the rows (a request's and its key's spots from the one-key run, the shared spots from
    the many-key run), the table's partitions whole, the indexes written, and the two ceilings."""
    one_key = lives(endpoint, throttle, "key", scale.key_requests, 1, scale.shards)
    many_keys = lives(endpoint, throttle, "shared", scale.shared_requests, scale.shared_keys, scale.shards)
    found = [r for r in units.rows(one_key) if r.cls != "shared"]
    found += [r for r in units.rows(many_keys) if r.cls == "shared"]
    hot_key, hot_shared = units.hottest(found, "key"), units.hottest(found, "shared")
    written = {spot.resource for run in (one_key, many_keys) for spot, got in run.consumed.items() if got.write}
    return {
        "runs": {
            "key": {"requests": scale.key_requests, "keys": 1},
            "shared": {"requests": scale.shared_requests, "keys": scale.shared_keys},
            "shards": scale.shards,
        },
        "rows": [row.as_json() for row in found],
        "partitions": [row.as_json() for row in units.partitions(one_key) if row.cls == "key"],
        "indexes_written": sorted(written - {units.TABLE}),
        "hottest": {"key": hot_key and hot_key.as_json(), "shared": hot_shared and hot_shared.as_json()},
        "per_key_ceiling": units.ceiling(hot_key),
        "per_key_ceiling_unsplit": units.ceiling(units.hottest(units.partitions(one_key), "key")),
        "table_wide_ceiling": units.ceiling(hot_shared),
    }


def measure(scales: dict[str, Scale]) -> dict[str, Any]:
    throttle = Throttle(UNLIMITED, UNLIMITED)
    with MotoServer(throttle=throttle) as endpoint:
        return {name: report(endpoint, throttle, scale) for name, scale in scales.items()}


def lines(found: dict[str, Any]) -> list[str]:
    """The full run as text: every row, the key's table partitions whole, then the two ceilings."""
    rows = units.collapse(units.Row(**row) for row in found["rows"])
    whole = units.collapse(units.Row(**row) for row in found["partitions"])
    runs = found["runs"]
    out = [
        f"units per request: {runs['key']['requests']} requests of one key (request, key), "
        f"{runs['shared']['requests']} over {runs['shared']['keys']} keys (shared); every limit set, "
        f"shards {runs.get('shards', 1)}",
        *units.table(rows),
        "",
        "the key's table partitions whole (what each takes before DynamoDB splits it for heat):",
        *units.table(whole),
        "",
        f"before DynamoDB splits the key's partitions for heat: {found.get('per_key_ceiling_unsplit')} requests/s",
        f"per-key ceiling: {found['per_key_ceiling']} requests/s",
        f"table-wide ceiling: {found['table_wide_ceiling']} requests/s",
    ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write and read units per request per DynamoDB partition")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    found = measure({"full": FULL, "check": CHECK, "full_sharded": FULL_SHARDED, "check_sharded": CHECK_SHARDED})
    if not args.no_save:
        RESULTS.write_text(json.dumps(found, indent=2) + "\n")
    if args.json:
        print(json.dumps(found, indent=2))
        return
    # a key as created, then the layout a hot key uses: the last two lines are the ceilings of that one
    print("\n".join([*lines(found["full"]), "", *lines(found["full_sharded"])]))


if __name__ == "__main__":
    main()
