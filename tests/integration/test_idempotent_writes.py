"""Idempotent writes, shown on the local DynamoDB: it honours `ClientRequestToken` as DynamoDB does, a settlement
applied whose answer was lost and then retried counts once, and two reconcilers racing over the same expired
requests settle each exactly once."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

import anyio
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from llm_relay.dynamo import Stores
from llm_relay.limits.rules import day_of
from llm_relay.metering import Usage
from llm_relay.outcome import StreamOutcome
from llm_relay.pricing import PriceTable
from llm_relay.termination import TerminationReason
from llm_relay_dev.request_tokens import faults_fired, inject_fault
from tests.integration.limits_support import MID_MINUTE, context, key_with, limiter

PRICES = PriceTable.load(None)
ITEM = {"pk": {"S": "T#1"}, "sk": {"S": "T"}}


def _put(table: str, value: str) -> list[dict[str, Any]]:
    return [{"Update": {"TableName": table, "Key": ITEM, "UpdateExpression": f"ADD n :{value}",
                        "ExpressionAttributeValues": {f":{value}": {"N": "1"}}}}]  # fmt: skip


def test_the_local_dynamodb_honours_client_request_tokens(stores: Stores) -> None:
    client, table = stores.client, stores.table_name
    token = uuid.uuid4().hex
    # GIVEN a transaction applied with a token
    client.transact_write_items(TransactItems=_put(table, "a"), ClientRequestToken=token)  # type: ignore[arg-type]
    # WHEN the same request comes again with the same token: success, not applied again
    client.transact_write_items(TransactItems=_put(table, "a"), ClientRequestToken=token)  # type: ignore[arg-type]
    item = client.get_item(TableName=table, Key=ITEM, ConsistentRead=True)["Item"]
    assert item["n"] == {"N": "1"}
    # WHEN the token comes with a different request: refused as DynamoDB refuses it
    with pytest.raises(ClientError) as mismatch:
        client.transact_write_items(TransactItems=_put(table, "b"), ClientRequestToken=token)  # type: ignore[arg-type]
    assert mismatch.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"
    # AND without a token every request applies
    client.transact_write_items(TransactItems=_put(table, "a"))  # type: ignore[arg-type]
    assert client.get_item(TableName=table, Key=ITEM, ConsistentRead=True)["Item"]["n"] == {"N": "2"}


def _outcome(completion: int) -> StreamOutcome:
    usage = Usage(5, completion)
    return StreamOutcome(
        TerminationReason.STOP, usage, 0.1, 0.01, 1.0, completion, cost_usd=PRICES("gpt-4o-mini", usage)
    )


@pytest.mark.parametrize("retrier", ["botocore", "settlement loop"])
def test_a_settlement_applied_whose_answer_was_lost_is_counted_once(
    stores: Stores, moto_endpoint: str, retrier: str
) -> None:
    # GIVEN an admitted request; the retry is botocore's own, or (botocore not retrying) the settlement's loop
    key = key_with(max_concurrent=2, tpm=10_000)
    client = None
    if retrier == "settlement loop":
        client = boto3.client("dynamodb", endpoint_url=moto_endpoint, config=Config(retries={"total_max_attempts": 1}))
    limits = limiter(moto_endpoint, stores.table_name, client=client)
    rid = f"req_{uuid.uuid4().hex}"
    ctx = context(key, rid)
    ctx = replace(ctx, ticket=anyio.run(limits.admit, ctx))
    fired = faults_fired(moto_endpoint)
    # WHEN its settlement is applied and the answer dropped, then retried with the same token
    inject_fault(moto_endpoint, "TransactWriteItems", contains=rid)
    anyio.run(limits.finalize, ctx, _outcome(20))
    assert faults_fired(moto_endpoint) == fired + 1
    # THEN it counted once: one record, and spend and token counters equal the sum of the records
    records = stores.usage.for_key(key.key_id, 0, 2e10)
    assert [r.request_id for r in records] == [rid]
    day = stores.usage.spend(key.key_id, "D#" + day_of(ctx.started_epoch))
    assert day["requests"] == 1 and day["completion_tokens"] == 20 and day["cost_usd"] == records[0].cost_usd
    counters = stores.limits.read_counters(key.key_id, MID_MINUTE)  # the limiter's clock
    assert counters["concurrency"]["active"] == 0
    assert counters["rate"]["tokens"] == records[0].prompt_tokens + records[0].completion_tokens


def _reconcile(endpoint: str, table: str) -> dict[str, Any]:
    env = {**os.environ, "RELAY_DYNAMODB_ENDPOINT": endpoint, "RELAY_TABLE_NAME": table}
    done = subprocess.run(
        [sys.executable, "-m", "llm_relay.cli", "reconcile", "--json"], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_two_reconcilers_racing_over_100_expired_requests_settle_each_once(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN 100 requests admitted 10 minutes ago with 60 s leases, whose relay died (never finalized, never renewed)
    key = key_with(max_concurrent=1000, tpm=10_000_000)
    past = time.time() - 600
    limits = limiter(moto_endpoint, stores.table_name, clock=lambda: past, lease_s=60)
    ids = [f"req_{uuid.uuid4().hex}" for _ in range(100)]

    async def admit_all() -> None:
        for rid in ids:
            await limits.admit(context(key, rid))

    anyio.run(admit_all)
    assert stores.limits.read_counters(key.key_id, past)["concurrency"]["active"] == 100
    # WHEN two `llm-relay reconcile` processes run at the same time
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: _reconcile(moto_endpoint, stores.table_name), range(2)))
    # THEN between them every request was settled exactly once: one `lost` record each, counters given back
    settled = [r["request_id"] for run in runs for r in run["settled"]]
    assert sorted(settled) == sorted(ids)
    records = stores.usage.for_key(key.key_id, 0, 2e10)
    assert sorted(r.request_id for r in records) == sorted(ids)
    assert {(r.termination_reason, r.usage_source) for r in records} == {("lost", "estimated")}
    assert stores.limits.read_counters(key.key_id, past)["concurrency"]["active"] == 0
    day = stores.usage.spend(key.key_id, "D#" + day_of(past))
    assert day["requests"] == 100
