"""The local DynamoDB's throttling accounting (dev/llm_relay_dev/throttling.py): sizes, units, index charges and the
per-partition window, under an injected clock."""

from __future__ import annotations

import base64

import pytest

from llm_relay_dev.local_dynamodb import parse_args, throttle_of
from llm_relay_dev.throttling import (
    Charge,
    Index,
    Schema,
    Throttle,
    item_size,
    read_units,
    value_size,
    write_charges,
    write_units,
)

SCHEMA = Schema(
    "t",
    "pk",
    "sk",
    (Index("gsi1", "gsi1pk", "gsi1sk", "ALL"), Index("open", "open_shard", "lease_until", "KEYS_ONLY")),
)
KEY = {"pk": {"S": "KEY#a"}, "sk": {"S": "S"}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def w(resource: str, partition: str, units: float) -> Charge:
    return Charge("write", resource, partition, units)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ({"S": "héllo"}, 6),
        ({"N": "123"}, 3),
        ({"N": "0.0000018"}, 2),  # leading and trailing zeros trimmed: "18"
        ({"N": "-12345.6700"}, 5),  # "1234567": 4 bytes + 1
        ({"N": "9E-7"}, 2),
        ({"B": base64.b64encode(b"\x00\x01\x02").decode()}, 3),
        ({"BOOL": True}, 1),
        ({"NULL": True}, 1),
        ({"L": [{"S": "ab"}, {"N": "1"}]}, 3 + (2 + 1) + (2 + 1)),
        ({"M": {"k": {"S": "v"}}}, 3 + 1 + 1 + 1),
        ({"SS": ["a", "bc"]}, 3),
    ],
)
def test_value_sizes_follow_dynamodbs_rules(value: dict[str, object], size: int) -> None:
    assert value_size(value) == size


def test_an_item_is_its_names_plus_its_values() -> None:
    assert item_size({"pk": {"S": "abc"}, "n": {"N": "42"}}) == 2 + 3 + 1 + 2
    assert item_size(None) == 0


def test_write_and_read_units_round_up_per_started_kb_and_4_kb() -> None:
    assert [write_units(s) for s in (0, 1, 1024, 1025)] == [1, 1, 1, 2]
    assert write_units(1025, transactional=True) == 4
    assert read_units(4096, consistent=True) == 1 and read_units(4097, consistent=True) == 2
    assert read_units(100, consistent=False) == 0.5
    assert read_units(100, consistent=False, transactional=True) == 2


def test_a_write_costs_the_larger_of_before_and_after_twice_in_a_transaction() -> None:
    # GIVEN an item of ~2 KB shrunk to a few bytes
    before = {**KEY, "blob": {"S": "x" * 2000}}
    # WHEN its write is charged
    single = write_charges(SCHEMA, KEY, before, dict(KEY), transactional=False)
    in_transaction = write_charges(SCHEMA, KEY, before, dict(KEY), transactional=True)
    # THEN by the larger (2 KB): 2 units, 4 inside a transaction, on the key's own partition
    assert single == [w("t", "KEY#a", 2)]
    assert in_transaction == [w("t", "KEY#a", 4)]


def test_a_delete_of_nothing_still_costs_a_unit() -> None:
    assert write_charges(SCHEMA, KEY, None, None, transactional=False) == [w("t", "KEY#a", 1)]


def test_an_index_entry_is_charged_to_the_index_partition_of_the_item() -> None:
    # GIVEN a new item that carries gsi1's key (projection ALL) and open's key (KEYS_ONLY)
    item = {**KEY, "gsi1pk": {"S": "G"}, "gsi1sk": {"S": "1"}, "open_shard": {"S": "3"}, "lease_until": {"N": "5"}}
    # WHEN it is written
    charges = write_charges(SCHEMA, KEY, None, item, transactional=True)
    # THEN each index's partition (the item's index key) takes one write, not doubled by the transaction
    assert charges == [w("t", "KEY#a", 2), w("t/index/gsi1", "G", 1), w("t/index/open", "3", 1)]


def test_a_sparse_index_is_charged_only_for_items_it_holds() -> None:
    plain = {**KEY, "n": {"N": "1"}}
    assert write_charges(SCHEMA, KEY, plain, {**plain, "n": {"N": "2"}}, transactional=False) == [w("t", "KEY#a", 1)]


def test_a_keys_only_index_ignores_changes_outside_its_keys() -> None:
    # GIVEN an item in the open index; WHEN a non-key attribute changes
    item = {**KEY, "open_shard": {"S": "3"}, "lease_until": {"N": "5"}, "n": {"N": "1"}}
    charges = write_charges(SCHEMA, KEY, item, {**item, "n": {"N": "2"}}, transactional=False)
    # THEN the KEYS_ONLY index is not written
    assert charges == [w("t", "KEY#a", 1)]


def test_a_moved_index_key_deletes_on_the_old_partition_and_puts_on_the_new() -> None:
    before = {**KEY, "open_shard": {"S": "3"}, "lease_until": {"N": "5"}}
    after = {**KEY, "open_shard": {"S": "4"}, "lease_until": {"N": "6"}}
    charges = write_charges(SCHEMA, KEY, before, after, transactional=False)
    assert charges == [w("t", "KEY#a", 1), w("t/index/open", "3", 1), w("t/index/open", "4", 1)]
    # AND an item leaving the index (its key attributes removed) deletes its entry
    assert write_charges(SCHEMA, KEY, before, dict(KEY), transactional=False)[1:] == [w("t/index/open", "3", 1)]


def test_a_partition_takes_its_capacity_then_refuses_until_the_next_second() -> None:
    # GIVEN a partition taking 3 write units a second
    clock = Clock()
    throttle = Throttle(write_units_per_s=3, read_units_per_s=9, clock=clock)
    hot, cold = [w("t", "hot", 1)], [w("t", "cold", 1)]
    # WHEN 4 one-unit writes hit it within a second
    answers = [throttle.admit([hot]) for _ in range(4)]
    # THEN the 4th is refused, and counted
    assert answers == [[[]], [[]], [[]], [hot]]
    assert throttle.throttled[("t", "hot")] == 1 and throttle.consumed_write[("t", "hot")] == 3
    # AND another partition is not affected, nor are the hot one's reads
    assert throttle.admit([cold]) == [[]]
    assert throttle.admit([[Charge("read", "t", "hot", 9)]]) == [[]]
    # AND in the next second the partition takes writes again
    clock.now = 0.999
    assert throttle.admit([hot]) == [hot]
    clock.now = 1.0
    assert throttle.admit([hot]) == [[]]


def test_a_partition_takes_one_request_larger_than_its_capacity_each_second() -> None:
    throttle = Throttle(write_units_per_s=3, clock=Clock())
    assert throttle.admit([[w("t", "p", 5)]]) == [[]]
    assert throttle.admit([[w("t", "p", 1)]]) == [[w("t", "p", 1)]]


def test_a_hot_index_partition_refuses_the_whole_write() -> None:
    # GIVEN an index partition used up
    throttle = Throttle(write_units_per_s=1, clock=Clock())
    throttle.admit([[w("t/index/gsi1", "G", 1)]])
    # WHEN a table write on a cold partition would update it
    over = throttle.admit([[w("t", "cold", 1), w("t/index/gsi1", "G", 1)]])
    # THEN the write is refused, and its table partition charged nothing
    assert over == [[w("t/index/gsi1", "G", 1)]]
    assert ("t", "cold") not in throttle.consumed_write


def test_a_transaction_is_all_or_nothing_and_a_batch_is_not() -> None:
    throttle = Throttle(write_units_per_s=2, read_units_per_s=1, clock=Clock())
    # GIVEN two items of a transaction on one partition, 2 + 2 units of 2
    over = throttle.admit([[w("t", "p", 2)], [w("t", "q", 2)], [w("t", "p", 2)]])
    # THEN only the third is throttled, and nothing is consumed
    assert [bool(o) for o in over] == [False, False, True] and throttle.consumed_write == {}
    # WHEN a batch of reads on one partition exceeds it
    reads = [[Charge("read", "t", "p", 1)], [Charge("read", "t", "p", 1)]]
    assert [bool(o) for o in throttle.admit(reads, all_or_nothing=False)] == [False, True]
    # THEN what fits is consumed
    assert throttle.consumed_read == {("t", "p"): 1}


def test_scale_stretches_the_second() -> None:
    # GIVEN time slowed 100 times: a simulated second lasts 100 wall seconds
    clock = Clock()
    throttle = Throttle(write_units_per_s=2, scale=100, clock=clock)
    hot = [w("t", "p", 1)]
    assert [bool(throttle.admit([hot])[0]) for _ in range(3)] == [False, False, True]
    # THEN the capacity comes back after 100 wall seconds, not one
    clock.now = 99.0
    assert throttle.seconds_left() == pytest.approx(1.0)
    assert throttle.admit([hot]) == [hot]
    clock.now = 100.0
    assert throttle.admit([hot]) == [[]]


def test_the_switch_builds_the_throttle() -> None:
    assert throttle_of(parse_args([])) is None
    args = parse_args(["--throttle", "--write-units-per-s", "20", "--read-units-per-s", "60", "--scale", "100"])
    throttle = throttle_of(args)
    assert throttle is not None
    assert (throttle.write_units_per_s, throttle.read_units_per_s, throttle.scale) == (20, 60, 100)
    with pytest.raises(ValueError, match="positive"):
        Throttle(scale=0)
