"""No index partition is written by every request (dynamo/layout.py, note 4): a day's usage records are spread over
the gsi1 shards, the `open` index over its shards, and spend items are not indexed. A table written before keeps
working: its records under the one `USAGE#<day>` partition are read beside the shards, an in-flight request of the
old `open` shards is still reconciled, and a spend item's old index keys go at its next settlement."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import anyio

from llm_relay.dynamo import Stores, layout
from llm_relay.ledger import Settlement
from llm_relay.limits.rules import day_of
from llm_relay.pricing import PriceTable
from llm_relay.reconciler import Reconciler
from llm_relay.usage import UsageRecord
from tests.integration.limits_support import context, key_with, limiter

DAY_START = (int(time.time()) // 86400) * 86400.0


def _record(key_id: str, request_id: str, at: float) -> UsageRecord:
    return UsageRecord(key_id, request_id, "gpt-4o-mini", at, "stop", 10, 20, cost_usd=Decimal("0.001"), mode="sse")


def test_a_days_records_spread_over_the_shards_and_come_back_in_time_order(stores: Stores) -> None:
    # GIVEN 60 records of one day, from three keys, written as settlement and refusals write them
    records = [_record(f"rk_{i % 3}", f"req_{uuid.uuid4().hex}", DAY_START + 60 + i) for i in range(60)]
    for record in records:
        stores.usage.put_refused(record, 90)
    # THEN they sit on many gsi1 partitions, none of them the day's single one of the old layout
    shards = {layout.usage_day(day_of(DAY_START), r.request_id) for r in records}
    assert len(shards) > 10 and f"USAGE#{day_of(DAY_START)}" not in shards
    # AND the report across keys reads every one of them back, oldest first
    back = stores.usage.for_all(DAY_START, DAY_START + 86400)
    assert [r.request_id for r in back] == [r.request_id for r in records]


def test_records_a_table_wrote_before_the_shards_are_read_beside_them(stores: Stores) -> None:
    # GIVEN a record of the old layout (gsi1pk USAGE#<day>) and one of the new, the old one earlier
    old, new = _record("rk_a", "req_old", DAY_START + 10), _record("rk_b", "req_new", DAY_START + 20)
    item = {**layout.usage_item(old, 90), "gsi1pk": f"USAGE#{day_of(DAY_START)}"}
    stores.client.put_item(TableName=stores.table_name, Item=layout.serialize(item))
    stores.usage.put_refused(new, 90)
    # THEN the report reads both, in time order
    assert [r.request_id for r in stores.usage.for_all(DAY_START, DAY_START + 86400)] == ["req_old", "req_new"]


def test_a_spend_item_indexed_by_the_old_layout_leaves_the_index_at_its_next_settlement(stores: Stores) -> None:
    # GIVEN a key's spend item of today as the old layout left it, in gsi1 under SPEND#D#<day>
    now = time.time()
    sk = layout.spend_sk(f"D#{day_of(now)}")
    old = {"pk": layout.partition("rk_a"), "sk": sk, "cost_usd": Decimal(1), "gsi1pk": sk, "gsi1sk": "rk_a"}
    stores.client.put_item(TableName=stores.table_name, Item=layout.serialize(old))
    # WHEN a request of the key is settled
    assert stores.limits.settle(Settlement(_record("rk_a", "req_1", now), 90))
    # THEN the spend counts it, and the item is no longer indexed
    item = stores.usage.spend("rk_a", f"D#{day_of(now)}")
    assert item["cost_usd"] == Decimal("1.001") and "gsi1pk" not in item and "gsi1sk" not in item


def test_a_request_on_an_open_shard_of_the_old_layout_is_still_reconciled(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN an admitted request whose item names an open shard of the old four, its lease long expired
    key = key_with(max_concurrent=2)
    past = time.time() - 600
    limits = limiter(moto_endpoint, stores.table_name, clock=lambda: past, lease_s=60)
    anyio.run(limits.admit, context(key, "req_from_before"))
    stores.client.update_item(
        TableName=stores.table_name,
        Key=layout.serialize(layout.request_key("req_from_before")),
        UpdateExpression="SET open_shard = :s",
        ExpressionAttributeValues=layout.serialize({":s": "OPEN#3"}),
    )
    assert "OPEN#3" in layout.open_shards()
    # WHEN the reconciler runs
    done = Reconciler(stores, PriceTable.load(), 90).run()
    # THEN it found it on that shard and settled it as lost, giving its slot back
    assert [r.request_id for r in done.settled] == ["req_from_before"]
    assert int(stores.limits.read_counters(key.key_id, time.time())["concurrency"].get("active", 0)) == 0
