"""`llm-relay migrate` on a table written the 0.1 way: each stream's lease an `l_<request id>` attribute of the key's
count item (0.1's admission: `SET #lease = :exp ADD active :one`). A dead 0.1 stream's lease is never given back
today, so the key is refused for good; the migration recounts `active` from the `leases` index (a stream in flight
counts) and drops the `l_*` attributes; `--dry-run` writes nothing, and a second run changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

import httpx

from llm_relay.dynamo import Stores, layout
from tests.conftest import RelayFactory
from tests.integration.helpers import chat_body
from tests.integration.ledger_support import new_key
from tests.waiting import wait_until

CLI = os.path.join(os.path.dirname(sys.executable), "llm-relay")
LONG = {"tokens": 100_000, "chunk_delay_ms": 20, "ttft_ms": 0}
SHORT = {"tokens": 3, "chunk_delay_ms": 0, "ttft_ms": 0}


def _admit_as_0_1(stores: Stores, key_id: str, request_id: str, lease_expiry: int) -> None:
    """What relay 0.1's admission wrote for a stream of a key with a concurrency limit: its request item (no ledger
    attributes), and its lease on the key's count item."""
    client = stores.client
    item = layout.request_item(request_id, key_id, "gpt-4o-mini", 86400)
    client.put_item(TableName=stores.table_name, Item=layout.serialize(item))
    client.update_item(
        TableName=stores.table_name,
        Key=layout.serialize({"pk": layout.partition(key_id), "sk": layout.CONC_SK}),
        UpdateExpression="SET #lease = :exp ADD active :one",
        ExpressionAttributeNames={"#lease": f"l_{request_id}"},
        ExpressionAttributeValues=layout.serialize({":exp": lease_expiry, ":one": 1}),
    )


def _count_item(stores: Stores, key_id: str) -> dict[str, Any]:
    return stores.limits.concurrency_item(key_id) or {}


def _migrate(stores: Stores, moto_endpoint: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "RELAY_DYNAMODB_ENDPOINT": moto_endpoint, "RELAY_TABLE_NAME": stores.table_name}
    done = subprocess.run([CLI, "migrate", *args, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _long_stream(stack: ExitStack, url: str, plain: str) -> Iterator[str]:
    client = stack.enter_context(httpx.Client(timeout=30))
    body = chat_body(stream=True, mock=LONG)
    stream = stack.enter_context(
        client.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {plain}"})
    )
    assert stream.status_code == 200
    lines = stream.iter_lines()
    next(lines)  # past its first chunk: admitted, holding a slot
    return lines


def test_migrate_recounts_a_0_1_table_drops_its_leases_and_is_idempotent(
    stores: Stores, moto_endpoint: str, make_relay: RelayFactory
) -> None:
    relay = make_relay()
    # GIVEN a key limited to 2 streams, one slot held by a 0.1 relay that died mid-stream (its lease long expired)
    plain, key = new_key(stores, max_concurrent=2)
    _admit_as_0_1(stores, key.key_id, "req_dead_0_1", int(time.time()) - 3600)
    # AND a key whose count holds 150 dead 0.1 leases (more than one write's worth of attributes)
    _, crowded = new_key(stores, max_concurrent=500)
    for n in range(150):
        _admit_as_0_1(stores, crowded.key_id, f"req_old_{n}", int(time.time()) - 3600)
    with ExitStack() as stack:
        # AND one stream of the first key in flight on today's relay: the count is full
        reader = _long_stream(stack, relay.url, plain)  # kept: a discarded reader closes its response
        assert _count_item(stores, key.key_id)["active"] == 2

        def refused() -> bool:
            body, auth = chat_body(mock=SHORT), {"authorization": f"Bearer {plain}"}
            return (
                httpx.post(f"{relay.url}/v1/chat/completions", json=body, headers=auth, timeout=30).status_code == 429
            )

        assert refused()  # the dead 0.1 lease is on no request item: nothing reclaims it
        before = {k: _count_item(stores, k) for k in (key.key_id, crowded.key_id)}

        # WHEN the migration runs dry
        dry = _migrate(stores, moto_endpoint, "--dry-run")
        # THEN it says what it would change, and changes nothing
        assert dry["dry_run"] is True and dry["busy"] == []
        assert sorted(dry["changed"], key=lambda c: c["active_before"]) == [
            {"key_id": key.key_id, "active_before": 2, "active_after": 1, "v01_leases_dropped": 1},
            {"key_id": crowded.key_id, "active_before": 150, "active_after": 0, "v01_leases_dropped": 150},
        ]
        assert {k: _count_item(stores, k) for k in before} == before and refused()

        # WHEN it runs
        done = _migrate(stores, moto_endpoint)
        # THEN each count is what the `leases` index holds (the stream in flight), and no 0.1 lease is left
        assert sorted(c["key_id"] for c in done["changed"]) == sorted(before)
        assert _count_item(stores, key.key_id) == {
            "pk": layout.partition(key.key_id),
            "sk": layout.CONC_SK,
            "active": Decimal(1),
        }
        assert _count_item(stores, crowded.key_id)["active"] == 0
        assert not [name for name in _count_item(stores, crowded.key_id) if name.startswith("l_")]
        # AND the key's second slot is free again: a request is admitted beside the stream in flight
        answer = httpx.post(
            f"{relay.url}/v1/chat/completions",
            json=chat_body(mock=SHORT),
            headers={"authorization": f"Bearer {plain}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

        # WHEN it runs again
        after = {k: _count_item(stores, k) for k in before}
        again = _migrate(stores, moto_endpoint)
        # THEN nothing changes
        assert again["changed"] == [] and again["already_current"] == 2
        assert {k: _count_item(stores, k) for k in before} == after
        del reader
    # AND once the stream ends, its settlement gives its slot back: the count returns to 0
    wait_until(lambda: _count_item(stores, key.key_id)["active"] == 0, "the stream's slot given back", interval=0.1)
