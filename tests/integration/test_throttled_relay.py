"""The relay end to end against a local DynamoDB that throttles as DynamoDB does (per partition, of the table and of
each index, in 1 s windows), with capacities small enough that a few dozen requests reach them: a hot key is
answered 503 with a Retry-After that holds and leaks nothing, and many keys at once do not meet on one index
partition. Each test has a DynamoDB of its own, so its throttle's counters are its own."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import boto3
import httpx
import pytest
from botocore.config import Config

from llm_relay.dynamo import Stores
from llm_relay.limits.budgets import periods_of
from llm_relay.limits.rules import Limits
from llm_relay.usage import UsageRecord
from llm_relay_dev.throttling import Throttle
from tests.conftest import Upstream
from tests.integration.helpers import chat_body
from tests.integration.throttle_support import (
    CHAT_PATH,
    Answer,
    Clock,
    Throttled,
    ask,
    burst,
    new_key,
    relay_on,
    throttled_dynamodb,
)
from tests.waiting import wait_until

#: Every limit a key can have, none of them reached by these tests: the requests write every limit item, and only
#: DynamoDB's capacity refuses them.
EVERY_LIMIT = {
    "rpm": 100_000,
    "tpm": 100_000_000,
    "max_concurrent": 1000,
    "daily_budget_usd": 100,
    "monthly_budget_usd": 1000,
}
#: Write units a partition takes in a second. A request of a key with every limit writes about 10 units to the key's
#: partition at admission (five items, doubled in a transaction) and as many at settlement, so two requests a
#: second fill it; thirty at once are many times what it takes.
HOT_KEY_WCU = 40
HOT_BURST = 30
ONE_ATTEMPT = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def hot_key_dynamodb() -> Iterator[Throttled]:
    with throttled_dynamodb(Throttle(HOT_KEY_WCU)) as dynamo:
        yield dynamo


def records_of(stores: Stores, key_id: str) -> list[UsageRecord]:
    return stores.usage.for_key(key_id, 0, time.time() + 60)


def request_id(answer: Answer) -> str:
    return answer.headers["x-request-id"]


def test_a_hot_key_is_answered_503_with_a_retry_after_that_holds(
    hot_key_dynamodb: Throttled, upstream: Upstream
) -> None:
    dynamo = hot_key_dynamodb
    plain, key = new_key(dynamo.stores, **EVERY_LIMIT)
    with relay_on(dynamo, upstream.url) as url:
        # WHEN many requests of one key arrive at once
        answers = burst(url, [plain] * HOT_BURST)
        # THEN its partition was throttled, and the requests it could not admit in time were answered 503
        assert dynamo.throttled_on(dynamo.table).get(f"KEY#{key.key_id}", 0) > 0
        statuses = Counter(answer.status for answer in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= 1 and statuses[503] >= 1, statuses
        refused = [answer for answer in answers if answer.status == 503]
        assert {answer.headers.get("content-type") for answer in refused} == {"application/json"}
        assert all('"service_unavailable"' in answer.body for answer in refused)
        # AND each with a Retry-After no longer than two of DynamoDB's windows. The relay sends 1 s: a partition's
        # capacity is counted in 1 s windows, so 1 s from any moment a new window has begun and the partition takes
        # writes again; longer would hold clients back for nothing, shorter would send them into the same window.
        waits = {answer.retry_after for answer in refused}
        assert None not in waits
        assert all(wait is not None and 0 < wait <= 2 for wait in waits), waits
        # AND once every settlement is written (those DynamoDB did not take in time are retried in the background),
        # the key holds nothing and has exactly one usage record per admitted request
        admitted = {request_id(answer) for answer in answers if answer.status == 200}
        assert_nothing_held(dynamo.stores, key.key_id, admitted)
        # AND a request sent once the last Retry-After has passed is admitted (the relay's own backlog of
        # settlements competes with it until then: test_a_throttled_admission_waits_for_the_next_window)
        last = max(refused, key=lambda answer: answer.ended_at)
        retry_at = last.ended_at + (last.retry_after or 0)
        wait_until(lambda: time.monotonic() >= retry_at, "the last Retry-After passed")
        again = ask(url, plain)
        assert again.status == 200, again.body
        assert_nothing_held(dynamo.stores, key.key_id, admitted | {request_id(again)})
        # AND a request answered 503 left no record and holds nothing: its request item, if its admission may
        # have been applied, is finished as released
        for answer in refused:
            item = dynamo.stores.requests.get(request_id(answer))
            assert item is None or item.get("termination_reason") == "released", item


def assert_nothing_held(stores: Stores, key_id: str, admitted: set[str], shards: int = 1) -> None:
    """Wait until the key has one usage record per admitted request, then: no slot taken, no budget reserved,
    no record of any other request."""

    def settled() -> list[UsageRecord] | None:
        records = stores.usage.for_key(key_id, 0, time.time() + 60, shards)
        return records if len(records) >= len(admitted) else None

    records = wait_until(settled, f"{len(admitted)} usage records")
    assert sorted(record.request_id for record in records) == sorted(admitted)
    wait_until(
        lambda: all(
            stores.limits.read_counters(key_id, time.time(), shard)["concurrency"].get("active", 0) == 0
            for shard in range(shards)
        ),
        "the key's concurrency counts back to 0",
    )
    for period in {f"D#{r.day}" for r in records} | {f"M#{r.day[:7]}" for r in records}:
        spend = stores.usage.spend(key_id, period, shards)
        assert Decimal(str(spend.get("reserved_usd", 0))) == 0, (period, spend)
        assert spend["requests"] == len([r for r in records if period[2:] in r.day])


def test_a_refusal_on_a_throttled_partition_keeps_its_usage_record(upstream: Upstream) -> None:
    # GIVEN a key that refuses every request (a zero limit: no DynamoDB round trip to decide), and its partition
    # used up for the second, held still
    clock = Clock()
    with throttled_dynamodb(Throttle(HOT_KEY_WCU, clock=clock)) as dynamo, relay_on(dynamo, upstream.url) as url:
        plain, key = new_key(dynamo.stores, rpm=0)
        clock.freeze()
        fill_partition(dynamo, f"KEY#{key.key_id}")
        # WHEN a request is refused
        refused = ask(url, plain)
        assert refused.status == 429, refused.body
        # THEN once the partition takes writes again, the refusal is on record, as every refusal is
        clock.thaw()
        wait_until(lambda: records_of(dynamo.stores, key.key_id), "the refusal's usage record", timeout=5)


def fill_partition(dynamo: Throttled, pk: str) -> None:
    """Write small items to a partition until it is throttled (its window's capacity used up): one attempt each, so
    a retry cannot land in the next window."""
    client = boto3.client("dynamodb", endpoint_url=dynamo.endpoint, config=ONE_ATTEMPT)
    for n in range(HOT_KEY_WCU + 1):
        try:
            client.put_item(TableName=dynamo.table, Item={"pk": {"S": pk}, "sk": {"S": f"FILL#{n}"}})
        except client.exceptions.ProvisionedThroughputExceededException:
            return
    raise AssertionError(f"{pk} took {HOT_KEY_WCU + 1} writes in one window")


def test_a_throttled_cancel_poll_tries_again_at_its_interval_not_in_a_loop(upstream: Upstream) -> None:
    # GIVEN a stream whose request item takes 3 reads a second, and the cancel poll reading it 20 times a second,
    # with the throttle's second held still: once used up, the item's partition refuses every read
    clock = Clock()
    throttle = Throttle(read_units_per_s=3, clock=clock)
    with throttled_dynamodb(throttle) as dynamo, relay_on(dynamo, upstream.url, cancel_poll_interval_s=0.05) as url:
        plain, _ = new_key(dynamo.stores)
        clock.freeze()
        body = chat_body(mock={"tokens": 400, "chunk_delay_ms": 10})
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", url + CHAT_PATH, json=body, headers={"authorization": f"Bearer {plain}"}) as stream,
        ):
            assert stream.status_code == 200
            partition = f"REQ#{stream.headers['x-request-id']}"
            # WHEN its partition refuses the poll's reads
            wait_until(lambda: dynamo.throttled_on(dynamo.table).get(partition), "the request item's reads throttled")
            before, since = dynamo.throttled_on(dynamo.table)[partition], time.monotonic()
            wait_until(lambda: time.monotonic() - since >= 0.5, "half a second of throttled reads")
            refused = dynamo.throttled_on(dynamo.table)[partition] - before
            clock.thaw()
        # THEN the poll tried again a few times in that half second (once per poll interval, or fewer with a
        # backoff), not in a loop as fast as DynamoDB answers
        assert refused <= 20, f"{refused} throttled reads of {partition} in 0.5 s"


def test_a_throttled_admission_waits_for_the_next_window(upstream: Upstream) -> None:
    # GIVEN a key's partition used up at the start of a window of 3 s (time slowed down), and an admission timeout
    # that outlasts the window
    throttle = Throttle(HOT_KEY_WCU, scale=3)
    with (
        throttled_dynamodb(throttle) as dynamo,
        relay_on(dynamo, upstream.url, admission_timeout_s=8) as url,
    ):
        plain, key = new_key(dynamo.stores, **EVERY_LIMIT)
        wait_until(lambda: throttle.seconds_left() > 2.8, "a window just begun")
        fill_partition(dynamo, f"KEY#{key.key_id}")
        # WHEN a request of the key arrives
        answer = ask(url, plain)
        # THEN it is admitted once the partition takes writes again, within the admission timeout
        assert answer.status == 200, answer.body


#: Many keys at once, each one request: a few write units on each key's partition, one usage entry each on gsi1.
MANY_KEYS = 64
#: Small enough that the day's usage entries would throttle one gsi1 partition (more than 8 in one second; the
#: test checks that they were), large enough for one request of a key on its own partition.
MANY_KEYS_WCU = 8


def test_many_keys_at_once_do_not_meet_on_one_index_partition(upstream: Upstream) -> None:
    throttle = Throttle(MANY_KEYS_WCU)
    # roomy bounds: the local DynamoDB serves one request at a time, and a loaded machine queues 64 admissions past
    # the production bound (what is tested here is throttling, which never waits that long)
    roomy = {"admission_timeout_s": 15.0, "finalize_timeout_s": 15.0}
    with throttled_dynamodb(throttle) as dynamo, relay_on(dynamo, upstream.url, **roomy) as url:
        plains = [new_key(dynamo.stores)[0] for _ in range(MANY_KEYS)]
        # WHEN each key sends a request, all at once
        # (in waves of 16: the local DynamoDB serves one request at a time, and 64 at once on a loaded machine wait
        # past the client's read timeout, a 503 that has nothing to do with throttling)
        answers = [answer for wave in range(0, MANY_KEYS, 16) for answer in burst(url, plains[wave : wave + 16])]
        # THEN every one is answered
        assert Counter(answer.status for answer in answers) == {200: MANY_KEYS}, dict(throttle.throttled)
        wait_until(
            lambda: len(dynamo.stores.usage.for_all(time.time() - 3600, time.time() + 60)) == MANY_KEYS,
            "every usage record",
        )
        # AND no index partition was throttled, though in one second gsi1 took more than one partition takes: the
        # usage entries were spread over the day's shards
        gsi1 = dynamo.consumed_on("index:gsi1")
        assert dynamo.peak_on("index:gsi1") > MANY_KEYS_WCU, (throttle.peak_write, gsi1)
        assert len(gsi1) > 1 and all(part.count("#") == 2 for part in gsi1), gsi1
        for index in ("gsi1", "open", "leases"):
            assert dynamo.throttled_on(f"index:{index}") == {}, index


def test_the_same_burst_on_a_key_of_48_shards_is_admitted_whole(upstream: Upstream) -> None:
    # GIVEN the hot key's DynamoDB, and a key with the same limits over 48 shards, in use: each shard has served a
    # request today (its day's and month's spend items exist, each with its first block of the budget)
    throttle = Throttle(HOT_KEY_WCU)
    # roomy bounds, as in the many-keys test: the local DynamoDB serves one request at a time, and on a loaded machine
    # 30 admissions queue past the production bound, throttled or not
    roomy = {"admission_timeout_s": 15.0, "finalize_timeout_s": 15.0}
    with throttled_dynamodb(throttle) as dynamo, relay_on(dynamo, upstream.url, **roomy) as url:
        plain, key = new_key(dynamo.stores, **EVERY_LIMIT, shards=48)
        throttle.write_units_per_s = 1e9  # the warm-up is not what is measured
        now = time.time()
        limits = Limits.resolve(key.limits, Limits())
        for shard in range(1, 48):
            for period in periods_of(limits, now, shard):
                assert dynamo.stores.budgets.refill(key.key_id, "req_warm", period, Decimal("0.01"))
        throttle.write_units_per_s = HOT_KEY_WCU
        before = dynamo.consumed_on(dynamo.table)
        wait_until(lambda: throttle.seconds_left() > 0.8, "a window just begun")
        # WHEN the burst that throttled the key of one shard arrives
        answers = burst(url, [plain] * HOT_BURST)
        # THEN every request is admitted
        assert Counter(answer.status for answer in answers) == {200: HOT_BURST}, [a.body for a in answers]
        # AND its writes spread over the key's partitions (30 requests over 48 shards: about 22 of them), so that at
        # most the few partitions two or three requests shared took more than their second's units. How often those
        # were throttled depends on how the burst's retries fell into the windows (a loaded machine spreads them),
        # which partitions did does not
        after = dynamo.consumed_on(dynamo.table)
        written = {part for part, units in after.items() if units > before.get(part, 0.0)}
        shards = {part for part in written if part.startswith(f"KEY#{key.key_id}#")}
        assert len(shards) >= 12, sorted(written)
        assert len(dynamo.throttled_on(dynamo.table)) <= 5, dynamo.throttled_on(dynamo.table)
        assert_nothing_held(dynamo.stores, key.key_id, {request_id(answer) for answer in answers}, shards=48)
