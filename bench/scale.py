"""The relay's limits at scale, against a local DynamoDB that throttles as DynamoDB does (`make bench-scale`).

Each scenario drives requests through the relay's own limits code (`Limiter.admit`, then `Limiter.finalize` once the
request has held its slot a moment) against `MotoServer(throttle=...)`: every partition of the table and of each
index takes 1,000 write units a second. Time is scaled so that a 2-core machine can play the rates: with scale S a
partition's second lasts S wall seconds, and requests are offered at their rate / S, so the load on each partition,
in units per its second, is the real one. (The limiter's own clock is not scaled: a minute's rate window is a wall
minute, which the scenarios' limits are set for.)

Scenarios, every limit set on every key (set high enough not to refuse, except in the last one):

- one key at 1,000 new requests a second, as created (one shard): its partition throttles;
- the same key with `HOT_SHARDS` shards: nothing throttles;
- 100 keys at 10,000 requests a second in all: no index partition throttles (a day's usage, the `open` index);
- one key with shards whose limits bind (requests per minute, concurrent streams, a daily budget): how far past each
  limit the admitted requests went (never, by design).

It reports, per scenario: the requests offered and how they were answered, the requests DynamoDB throttled by where,
the busiest partition's write units per request, and each binding limit's overshoot; then the two ceilings
`bench/ledger_wcu.py` computes for the layout a hot key uses (from bench/results/ledger_units.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from aws_lambda_powertools import Logger

from llm_relay.chat_request import ChatRequest
from llm_relay.dynamo import Stores, make_client
from llm_relay.errors import RateLimited, ServiceUnavailable
from llm_relay.keys import KEY_ID_PREFIX, ApiKey
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

UNITS = Path(__file__).parent / "results" / "ledger_units.json"
RESULTS = Path(__file__).parent / "results" / "scale.json"
HOT_SHARDS = 48  # the layout a hot key uses (bench/ledger_wcu.py's SHARDS)
WALL_RATE = 20.0  # requests a wall second the local DynamoDB is offered (one request at a time is what it serves)
HIGH = {"rpm": 10**7, "tpm": 10**10, "max_concurrent": 10**6, "daily_budget_usd": 10**6, "monthly_budget_usd": 10**7}


@dataclass(frozen=True)
class Scenario:
    name: str
    keys: int
    shards: int
    rate: float  # new requests a (simulated) second, all keys together
    seconds: float  # simulated seconds offered
    limits: dict[str, Any] = field(default_factory=lambda: dict(HIGH))
    hold_s: float = 0.0  # wall seconds an admitted request holds its slot before it is settled

    @property
    def scale(self) -> float:
        return max(1.0, self.rate / WALL_RATE)


SCENARIOS = (
    Scenario("hot key, 1 shard", 1, 1, 1_000, 1),
    Scenario(f"hot key, {HOT_SHARDS} shards", 1, HOT_SHARDS, 1_000, 1),
    Scenario("hot day, 100 keys", 100, 1, 10_000, 0.2),
    Scenario(
        "binding limits, 8 shards",
        1,
        8,
        400,
        0.5,
        {"rpm": 150, "tpm": 10**7, "max_concurrent": 16, "daily_budget_usd": "0.001", "monthly_budget_usd": 1},
        hold_s=2.0,
    ),
)


@dataclass
class Tally:
    offered: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    admitted_at: list[float] = field(default_factory=list)  # wall epoch of each admission
    in_flight: int = 0
    most_in_flight: int = 0
    spent: Decimal = Decimal(0)


def key_id(scenario: str, n: int) -> str:
    return KEY_ID_PREFIX + hashlib.sha256(f"scale-{scenario}-{n}".encode()).hexdigest()[:12]


def context(key: ApiKey) -> RequestContext:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 20}
    chat = ChatRequest.model_validate(body)
    rid = "req_" + uuid.uuid4().hex
    return RequestContext(rid, key, chat, Prompt.of(chat), "sse", time.monotonic(), time.time())


def run(scenario: Scenario) -> dict[str, Any]:
    throttle = Throttle(scale=scenario.scale)
    table = f"scale-{uuid.uuid4().hex[:8]}"
    with MotoServer(throttle=throttle) as endpoint:
        client = make_client(endpoint, "us-east-1")
        create_table(client, table)
        stores = Stores.create(table, client)
        settings = Settings(table_name=table, upstream_url="http://unused/v1")
        prices = PriceTable.load()
        limiter = Limiter(
            stores,
            settings,
            pricer=prices,
            reconciler=Reconciler(stores, prices, settings.usage_retention_days),
            log=Logger(service="bench", level="CRITICAL"),
        )
        limits = {name: Decimal(str(value)) for name, value in {**scenario.limits, "shards": scenario.shards}.items()}
        keys = [ApiKey(key_id=key_id(scenario.name, n), name="scale", limits=limits) for n in range(scenario.keys)]
        tally = Tally()
        before = dict(throttle.consumed_write)
        started = time.monotonic()
        anyio.run(offer, scenario, limiter, keys, tally, prices)
        wall = time.monotonic() - started
        return report(scenario, throttle, table, tally, before, wall)


async def offer(scenario: Scenario, limiter: Limiter, keys: list[ApiKey], tally: Tally, prices: PriceTable) -> None:
    """Requests at their scaled rate, open loop (a request does not wait for the one before), round robin over the
    keys; each admitted one holds its slot `hold_s`, then is settled as a short answer."""
    count = math.ceil(scenario.rate * scenario.seconds)
    interval = scenario.scale / scenario.rate
    start = time.monotonic()
    outcome = StreamOutcome(TerminationReason.STOP, Usage(11, 20), 0.2, 0.01, 0.4, 20)

    async def one(n: int) -> None:
        ctx = context(keys[n % len(keys)])
        tally.offered += 1
        try:
            ticket = await limiter.admit(ctx)
        except RateLimited:
            tally.answers["429"] += 1
            return
        except ServiceUnavailable:
            tally.answers["503"] += 1
            return
        tally.answers["admitted"] += 1
        tally.admitted_at.append(time.time())
        tally.in_flight += 1
        tally.most_in_flight = max(tally.most_in_flight, tally.in_flight)
        await anyio.sleep(scenario.hold_s)
        tally.in_flight -= 1
        cost = prices(ctx.chat.model, outcome.usage) or Decimal(0)
        tally.spent += cost
        await limiter.finalize(replace(ctx, ticket=ticket), replace(outcome, cost_usd=cost))

    async with anyio.create_task_group() as tg:
        for n in range(count):
            await anyio.sleep(max(0.0, start + n * interval - time.monotonic()))
            tg.start_soon(one, n)


def report(
    scenario: Scenario, throttle: Throttle, table: str, tally: Tally, before: dict[tuple[str, str], float], wall: float
) -> dict[str, Any]:
    used = {spot: units - before.get(spot, 0.0) for spot, units in throttle.consumed_write.items()}
    ours = {(resource, part): units for (resource, part), units in used.items() if resource.startswith(table)}
    busiest = max(ours.items(), key=lambda item: item[1], default=(("", ""), 0.0))
    throttled = Counter[str]()
    for (resource, _), count in throttle.throttled.items():
        if resource.startswith(table):
            throttled[resource.removeprefix(table).removeprefix("/index/") or "table"] += count
    out: dict[str, Any] = {
        "scenario": scenario.name,
        "keys": scenario.keys,
        "shards": scenario.shards,
        "rate": scenario.rate,
        "scale": scenario.scale,
        "offered": tally.offered,
        "answers": dict(tally.answers),
        "throttled": dict(throttled),
        "busiest_partition": busiest[0][1],
        "busiest_wcu_per_request": round(busiest[1] / max(1, tally.offered), 3),
        "wall_s": round(wall, 1),
    }
    limits = scenario.limits
    if limits["rpm"] < HIGH["rpm"]:
        in_any_minute = max(
            (sum(1 for t in tally.admitted_at if s <= t < s + 60) for s in tally.admitted_at), default=0
        )
        out["overshoot"] = {
            "rpm": in_any_minute - int(limits["rpm"]),
            "max_concurrent": tally.most_in_flight - int(limits["max_concurrent"]),
            "daily_budget_usd": str(tally.spent - Decimal(str(limits["daily_budget_usd"]))),
        }
    return out


def lines(rows: list[dict[str, Any]], ceilings: dict[str, Any]) -> list[str]:
    out = [
        f"{'scenario':<28} {'req/s':>7} {'offered':>7} {'admitted':>8} {'429':>5} {'503':>5} "
        f"{'throttled (where)':<26} {'busiest WCU/req':>15}  overshoot (rpm, streams, budget USD)"
    ]
    for row in rows:
        answers = row["answers"]
        where = ", ".join(f"{name} {count}" for name, count in sorted(row["throttled"].items())) or "none"
        over = row.get("overshoot")
        overshoot = "" if over is None else f"{over['rpm']}, {over['max_concurrent']}, {over['daily_budget_usd']}"
        out.append(
            f"{row['scenario']:<28} {row['rate']:>7,.0f} {row['offered']:>7} {answers.get('admitted', 0):>8} "
            f"{answers.get('429', 0):>5} {answers.get('503', 0):>5} {where:<26} {row['busiest_wcu_per_request']:>15}"
            f"  {overshoot}"
        )
    out += [
        "",
        f"per-key ceiling: {ceilings['per_key_ceiling']} requests/s",
        f"table-wide ceiling: {ceilings['table_wide_ceiling']} requests/s",
    ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the relay's limits at scale, on a throttling local DynamoDB")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--only", help="run the scenarios whose name contains this")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    logging.getLogger("llm_relay").setLevel(logging.CRITICAL)  # each 503 logs its cause: counted here instead
    rows = [run(s) for s in SCENARIOS if args.only is None or args.only in s.name]
    # the ceilings of the layout a hot key uses, as the write-unit calculator computed them
    ceilings = json.loads(UNITS.read_text())["full_sharded"]
    if args.only is None:
        RESULTS.write_text(json.dumps({"scenarios": rows, "ceilings": ceilings}, indent=2, default=str) + "\n")
    print(json.dumps(rows, indent=2, default=str) if args.json else "\n".join(lines(rows, ceilings)))


if __name__ == "__main__":
    main()
