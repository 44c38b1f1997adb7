"""The units a request costs on each DynamoDB partition (`bench/ledger_wcu.py`), at its small `check` scale, against
the committed baseline (bench/results/ledger_units.json, its `check` entry, recorded by `python -m bench.ledger_wcu`
with the same requests, keys and ids): a change that puts more write or read units per request on the busiest
`key` item or index partition, or on the busiest `shared` one, fails here with the spot's name. A cost meant to
rise is recorded by rerunning the benchmark (and its table in docs/limits.md updated)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from bench import ledger_wcu, units

from llm_relay_dev.table import TABLE_RESOURCE, load_template


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    found: dict[str, Any] = ledger_wcu.measure({"check": ledger_wcu.CHECK})["check"]
    return found


@pytest.fixture(scope="module")
def baseline() -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads(ledger_wcu.RESULTS.read_text())["check"]
    return recorded


def test_no_busiest_spot_costs_more_than_the_baseline(measured: dict[str, Any], baseline: dict[str, Any]) -> None:
    # GIVEN the same requests as the baseline's, WHEN they live through the relay's code, THEN no busier spot
    problems = units.exceeding(measured["rows"], baseline["rows"])
    assert not problems, "units per request above bench/results/ledger_units.json:\n" + "\n".join(problems)


def test_the_comparison_names_a_spot_that_costs_more(measured: dict[str, Any]) -> None:
    # GIVEN a baseline whose key spots each took one write unit less than today's
    cheaper = [{**r, "wcu": r["wcu"] - 1} if r["cls"] == "key" else r for r in measured["rows"]]
    # WHEN today's rows are compared with it, THEN the comparison fails once, naming today's busiest key spot
    problems = units.exceeding(measured["rows"], cheaper)
    busiest = max((r for r in measured["rows"] if r["cls"] == "key"), key=lambda r: float(r["wcu"]))
    assert len(problems) == 1 and problems[0].startswith(f"key spot {busiest['resource']} {busiest['pattern']}: ")


def test_every_index_and_class_is_seen(measured: dict[str, Any]) -> None:
    # every global secondary index template.yaml declares is written by a request's life, and counted
    declared = load_template()["Resources"][TABLE_RESOURCE]["Properties"]["GlobalSecondaryIndexes"]
    assert measured["indexes_written"] == sorted(index["IndexName"] for index in declared)
    resources = {row["resource"] for row in measured["rows"]}
    assert resources == {units.TABLE, *measured["indexes_written"]}
    assert {row["cls"] for row in measured["rows"]} == set(units.CLASSES)
    assert measured["per_key_ceiling"] and measured["table_wide_ceiling"]


def test_the_ceilings_follow_the_busiest_spots(measured: dict[str, Any]) -> None:
    rows = [units.Row(**row) for row in measured["rows"]]
    hot_key = units.hottest(rows, "key")
    assert hot_key is not None and units.ceiling(hot_key) == measured["per_key_ceiling"]
    # a spot twice as busy halves the ceiling
    doubled = replace(hot_key, pattern=hot_key.pattern + " doubled", wcu=hot_key.wcu * 2)
    assert units.ceiling(units.hottest([*rows, doubled], "key")) == units.WRITE_UNITS_PER_S // (hot_key.wcu * 2)


def test_the_layout_a_hot_key_uses_meets_both_targets() -> None:
    # GIVEN a key with every limit set over 48 shards, and many such keys
    found: dict[str, Any] = ledger_wcu.measure({"sharded": ledger_wcu.CHECK_SHARDED})["sharded"]
    rows = [units.Row(**row) for row in found["rows"]]
    hot_key, hot_shared = units.hottest(rows, "key"), units.hottest(rows, "shared")
    assert hot_key is not None and hot_shared is not None
    # THEN no item of the key takes more than one write unit a request: over 1,000 new requests a second for one key
    assert hot_key.wcu <= 1.0 and found["per_key_ceiling"] >= 1000, hot_key
    # AND no partition of the key either, before DynamoDB splits any for heat
    assert found["per_key_ceiling_unsplit"] >= 1000, found["partitions"]
    # AND no partition every key shares takes more than 0.1 write unit a request: over 10,000 requests a second in all
    assert hot_shared.wcu <= 0.1 and found["table_wide_ceiling"] >= 10_000, hot_shared
