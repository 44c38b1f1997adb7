"""A key with `shards`: its rate and concurrency limits split over that many items, each request taking from the
shard its id hashes to (then the next). The shards together never admit more than the key's limits; what admission
took is given back to the shard it came from, by settlement and by the reconciler alike."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import replace
from decimal import Decimal

import anyio
import pytest

from llm_relay.dynamo import Stores, layout
from llm_relay.errors import RateLimited
from llm_relay.limits.rules import split
from llm_relay.metering import Usage
from llm_relay.pricing import PriceTable
from llm_relay.reconciler import Reconciler
from tests.integration.limits_support import MID_MINUTE, admit_all, context, key_with, limiter
from tests.integration.test_limits_admission import outcome


def _first_choices(prefix: str, n: int, shards: int) -> Counter[int]:
    return Counter(layout.shard_of(f"{prefix}_{i}", shards) for i in range(n))


def test_racing_requests_fill_every_shard_and_never_more_than_the_key_limit(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a key with rpm 40 over 4 shards (10 each), and 80 requests whose ids give every shard at least its share
    key = key_with(rpm=40, shards=4)
    assert all(count >= split(40, 4, s) for s, count in _first_choices("rate", 80, 4).items())
    # WHEN they all race
    outcomes = admit_all(limiter(moto_endpoint, stores.table_name), key, 80, "rate")
    # THEN exactly the key's limit is admitted, each shard's share on its own item
    assert outcomes.count("admitted") == 40
    minute = MID_MINUTE // 60
    for shard in range(4):
        counters = stores.limits.read_counters(key.key_id, MID_MINUTE, shard)["rate"]
        assert counters["requests"] == 10 and counters["sk"] == layout.rate_sk(int(minute), shard)


def test_concurrency_is_exact_over_the_shards_and_every_slot_goes_back_to_its_own(
    stores: Stores, moto_endpoint: str
) -> None:
    # GIVEN a key with 8 streams over 4 shards, and 24 requests that give every shard its share at least
    key = key_with(max_concurrent=8, shards=4)
    assert all(count >= 2 for count in _first_choices("conc", 24, 4).values())
    limits = limiter(moto_endpoint, stores.table_name)
    admitted = []

    async def admit(i: int) -> None:
        ctx = context(key, f"conc_{i}")
        with contextlib.suppress(RateLimited):  # refused: its shard and the next are full
            admitted.append(replace(ctx, ticket=await limits.admit(ctx)))

    async def burst() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(admit, i)

    anyio.run(burst)
    # THEN 8 run, two on each shard
    assert len(admitted) == 8
    assert Counter(ctx.ticket.shard for ctx in admitted if ctx.ticket) == {0: 2, 1: 2, 2: 2, 3: 2}
    # WHEN they finish
    for ctx in admitted:
        anyio.run(limits.finalize, ctx, outcome())
    # THEN every shard's count is back to 0, and the key admits again
    assert [stores.limits.read_counters(key.key_id, MID_MINUTE, s)["concurrency"]["active"] for s in range(4)] == [
        0
    ] * 4
    assert admit_all(limits, key, 1, "again") == ["admitted"]


def test_tokens_are_settled_on_the_shard_that_reserved_them(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a key with a TPM over 4 shards and one admitted request reserving its prompt and 95 tokens
    key = key_with(tpm=100_000, shards=4)
    limits = limiter(moto_endpoint, stores.table_name)
    ctx = context(key, "req_tokens", max_tokens=95)
    ctx = replace(ctx, ticket=anyio.run(limits.admit, ctx))
    assert ctx.ticket is not None
    shard = ctx.ticket.shard
    # WHEN it finishes having used 12 + 20 tokens
    anyio.run(limits.finalize, ctx, outcome(usage=Usage(12, 20)))
    # THEN its shard's minute holds the actual tokens, and no other shard holds any
    assert stores.limits.read_counters(key.key_id, MID_MINUTE, shard)["rate"]["tokens"] == 32
    assert all(not stores.limits.read_counters(key.key_id, MID_MINUTE, s)["rate"] for s in range(4) if s != shard)


def test_a_lost_request_gives_its_slot_back_to_its_shard(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a request of a sharded key admitted long ago, whose relay died (its lease expired)
    key = key_with(max_concurrent=4, shards=2)
    past = time.time() - 600
    limits = limiter(moto_endpoint, stores.table_name, clock=lambda: past, lease_s=60)
    ctx = context(key, "req_dead_shard")
    ticket = anyio.run(limits.admit, ctx)
    item = stores.requests.get("req_dead_shard") or {}
    assert int(item.get("shard", 0)) == ticket.shard and item["lease_key"] == layout.lease_key(key.key_id, ticket.shard)
    # WHEN the reconciler runs
    settled = Reconciler(stores, PriceTable.load(), 90).run().settled
    # THEN it settled it as lost and the slot went back to that shard
    assert [r.request_id for r in settled] == ["req_dead_shard"]
    assert stores.limits.read_counters(key.key_id, time.time(), ticket.shard)["concurrency"]["active"] == 0


def test_a_key_with_one_shard_keeps_its_items_as_they_were(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a key that sets shards 1 (as a key that sets none)
    key = key_with(rpm=5, max_concurrent=2, shards=1)
    limits = limiter(moto_endpoint, stores.table_name)
    ctx = context(key, "req_single")
    ticket = anyio.run(limits.admit, ctx)
    # THEN its counters are the key's own items, and the request item names no shard
    counters = stores.limits.read_counters(key.key_id, MID_MINUTE)
    assert counters["rate"]["sk"] == layout.rate_sk(int(MID_MINUTE // 60)) and counters["concurrency"]["sk"] == "CONC"
    item = stores.requests.get("req_single") or {}
    assert ticket.shard == 0 and "shard" not in item and item["lease_key"] == key.key_id


def _id_on(shard: int, shards: int, prefix: str) -> str:
    """A request id that hashes to `shard` of `shards`."""
    return next(rid for n in range(10_000) if layout.shard_of(rid := f"{prefix}_{n}", shards) == shard)


def test_a_request_on_a_shard_takes_a_block_for_its_admission_and_another_for_its_extension(
    stores: Stores, moto_endpoint: str
) -> None:
    # GIVEN a key of 2 shards with a small daily budget, and a request on shard 1 (whose item has no headroom yet)
    key = key_with(daily_budget_usd="0.008", shards=2)
    limits = limiter(moto_endpoint, stores.table_name, clock=time.time)
    ctx = context(key, _id_on(1, 2, "blocks"))
    ctx = replace(ctx, ticket=anyio.run(limits.admit, ctx))
    assert ctx.ticket is not None and ctx.ticket.shard == 1 and ctx.ticket.budget is not None
    reservation = ctx.ticket.budget
    guard = limits.budget_guard(ctx)
    assert guard is not None

    async def past_the_reservation() -> bool:
        async with anyio.create_task_group() as tg:
            guard.start(tg)
            allowed = await guard.allow(reservation.tokens + 1)
        return allowed

    # WHEN its stream runs past what admission reserved, twice over
    assert anyio.run(past_the_reservation)
    assert anyio.run(past_the_reservation)
    # THEN each extension was granted from a block of its own (a second block is a new transfer, not a replay)
    assert reservation.extensions == 2 and not guard.refused
    bank = stores.limits._get(key.key_id, "SPEND#D#" + time.strftime("%Y-%m-%d", time.gmtime()))
    assert bank is not None and Decimal(bank["granted_usd"]) >= reservation.usd


def test_a_shards_spend_before_a_budget_counts_once_a_budget_is_set(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a key of 2 shards with a daily budget only, whose shard 1 settled 10 requests (no monthly budget yet)
    key = key_with(daily_budget_usd="10", shards=2)
    limits = limiter(moto_endpoint, stores.table_name, clock=time.time)
    for n in range(10):
        ctx = context(key, _id_on(1, 2, f"before{n}"))
        anyio.run(limits.finalize, replace(ctx, ticket=anyio.run(limits.admit, ctx)), outcome(usage=Usage(5, 2000)))
    month = "M#" + time.strftime("%Y-%m", time.gmtime())
    spent = Decimal(stores.usage.spend(key.key_id, month, 2)["cost_usd"])
    # WHEN a monthly budget of twice that is set, and requests keep coming on shard 1
    budgeted = key_with(daily_budget_usd="10", monthly_budget_usd=str(spent * 2), shards=2)
    budgeted = replace(budgeted, key_id=key.key_id)
    admitted = 0
    for n in range(40):
        ctx = context(budgeted, _id_on(1, 2, f"after{n}"))
        try:
            ticket = anyio.run(limits.admit, ctx)
        except RateLimited:
            continue
        admitted += 1
        anyio.run(limits.finalize, replace(ctx, ticket=ticket), outcome(usage=Usage(5, 2000)))
    # THEN the month's spend, what came before the budget included, never passes it
    total = Decimal(stores.usage.spend(key.key_id, month, 2)["cost_usd"])
    assert 0 < admitted < 40 and total <= spent * 2, (admitted, total, spent)


def test_a_stale_previous_minute_on_a_shard_without_headroom_is_not_a_budget_refusal(
    stores: Stores, moto_endpoint: str
) -> None:
    # GIVEN a key of 3 shards with an RPM and a budget, whose shard 1 counted requests in the previous minute that
    # this process has not seen, and whose shard 1 has no headroom yet today
    key = key_with(rpm=3000, daily_budget_usd="10", shards=3)
    earlier = limiter(moto_endpoint, stores.table_name, clock=lambda: MID_MINUTE - 60)
    for n in range(5):
        anyio.run(earlier.admit, context(key, _id_on(1, 3, f"prev{n}")))
    fresh = limiter(moto_endpoint, stores.table_name)  # nothing cached: its previous minute reads 0
    # WHEN a request lands on shard 1: its write fails twice over (the previous minute, the headroom)
    ticket = anyio.run(fresh.admit, context(key, _id_on(1, 3, "now")))
    # THEN it is admitted: the minute corrected, a block taken from the bank
    assert ticket.shard == 1


def test_a_shard_count_above_a_keys_limits_is_cut_to_them(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a key of 3 concurrent streams that asks for 8 shards: shares of 0 would refuse for ever
    key = key_with(max_concurrent=3, shards=8)
    limits = limiter(moto_endpoint, stores.table_name)
    # THEN 3 streams run at once, and the fourth is refused with a wait, not "never"
    assert admit_all(limits, key, 12, "cut").count("admitted") == 3
    with pytest.raises(RateLimited) as refused:
        anyio.run(limits.admit, context(key, "cut_more"))
    assert "retry-after" in refused.value.headers
