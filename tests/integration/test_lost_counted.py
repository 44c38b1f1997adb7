"""`lost` is counted on every path: a request a dead relay left behind, settled as `lost` by a refused admission (in
a relay), by the scheduled reconciler (its Lambda handler) or by `llm-relay reconcile` (an operator's process),
is counted alike by all three (one helper): `RequestsReconciledLost`, `StreamsTerminated{reason=lost}`, and the
tokens and cost the ledger booked. The CLI, which has no Lambda log stream to carry EMF, publishes the same data
points with CloudWatch PutMetricData (to the moto server here), and prints how many it settled."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio
import boto3
import httpx
import pytest

from llm_relay import reconcile_handler
from llm_relay.dynamo import Stores
from llm_relay.keys import ApiKey
from llm_relay.metrics import COMPLETION_TOKENS, COST, DURATION, PROMPT_TOKENS, RECONCILED_LOST, STREAMS
from tests.conftest import RelayFactory
from tests.integration.helpers import chat_body
from tests.integration.ledger_support import new_key
from tests.integration.limits_support import context, limiter

SHORT = {"tokens": 3, "chunk_delay_ms": 0, "ttft_ms": 0}


def _leave_dead_request(stores: Stores, moto_endpoint: str, key: ApiKey, request_id: str) -> None:
    """A request admitted 10 minutes ago by a relay that died: its 60 s lease long expired, its slot still taken."""
    past = time.time() - 600
    anyio.run(limiter(moto_endpoint, stores.table_name, clock=lambda: past, lease_s=60).admit, context(key, request_id))


def _emf(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def _lost_counts(docs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """What a party that settled requests as `lost` counted: the request's own finalization is left out (it has a
    StreamDuration; a lost request's figures have none)."""
    return {
        "reconciled": [d[RECONCILED_LOST] for d in docs if RECONCILED_LOST in d],
        "streams": [(d["reason"], d[STREAMS]) for d in docs if STREAMS in d and d["reason"] == "lost"],
        "figures": [
            (d["model"], d[PROMPT_TOKENS], d[COMPLETION_TOKENS], d[COST])
            for d in docs
            if PROMPT_TOKENS in d and DURATION not in d and "model" in d
        ],
    }


def test_lost_is_counted_alike_by_a_refused_admission_the_schedule_and_the_cli(
    stores: Stores,
    moto_endpoint: str,
    make_relay: RelayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a key limited to one stream, whose slot a dead relay's request holds
    plain, key = new_key(stores, max_concurrent=1)
    _leave_dead_request(stores, moto_endpoint, key, "req_dead_admission")
    relay = make_relay()
    capsys.readouterr()
    # WHEN the key's next request arrives: refused by the count, the relay settles the expired one and admits it
    answer = httpx.post(
        f"{relay.url}/v1/chat/completions",
        json=chat_body(mock=SHORT),
        headers={"authorization": f"Bearer {plain}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    by_admission = _lost_counts(_emf(capsys.readouterr().out))
    # AND another dead request of the key is settled by the scheduled reconciler
    _leave_dead_request(stores, moto_endpoint, new_key(stores, max_concurrent=1)[1], "req_dead_schedule")
    monkeypatch.setenv("RELAY_DYNAMODB_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("RELAY_TABLE_NAME", stores.table_name)
    monkeypatch.setattr(reconcile_handler, "_reconciler", None)
    assert reconcile_handler.handler({}, None)["settled"] == 1
    by_schedule = _lost_counts(_emf(capsys.readouterr().out))
    # THEN both counted it alike: one settled as lost, one stream ended `lost`, its tokens and cost
    assert by_admission == by_schedule
    assert by_schedule["reconciled"] == [[1.0]] and by_schedule["streams"] == [("lost", [1.0])]
    [(model, prompt, completion, cost)] = by_schedule["figures"]
    assert model == "gpt-4o-mini" and prompt[0] > 0 and completion == [0.0] and cost[0] > 0

    # WHEN a third is settled by an operator's `llm-relay reconcile`, publishing to its own namespace
    _leave_dead_request(stores, moto_endpoint, new_key(stores, max_concurrent=1)[1], "req_dead_cli")
    namespace = f"LLMRelayTest{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "RELAY_DYNAMODB_ENDPOINT": moto_endpoint,
        "RELAY_TABLE_NAME": stores.table_name,
        "POWERTOOLS_METRICS_NAMESPACE": namespace,
    }
    cli = os.path.join(os.path.dirname(sys.executable), "llm-relay")
    done = subprocess.run([cli, "reconcile"], env=env, capture_output=True, text=True, timeout=60)
    # THEN it prints how many it settled
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("settled 1 request(s) as lost"), done.stdout
    assert "req_dead_cli" in done.stdout and "not published" not in done.stderr
    # AND CloudWatch holds the same data points the scheduled reconciler's EMF made (each per model and rolled up;
    # moto sums a rollup's query over every set that contains it, so only the per-model sums are compared)
    published = _published(moto_endpoint, namespace)
    assert published.keys() == {
        (name, dims) for name in (PROMPT_TOKENS, COMPLETION_TOKENS, COST) for dims in ((("model", model),), ())
    } | {(RECONCILED_LOST, ()), (STREAMS, (("reason", "lost"),))}
    assert published[(RECONCILED_LOST, ())] == 1.0 and published[(STREAMS, (("reason", "lost"),))] == 1.0
    assert published[(PROMPT_TOKENS, (("model", model),))] == prompt[0]
    assert published[(COMPLETION_TOKENS, (("model", model),))] == 0.0
    assert published[(COST, (("model", model),))] == cost[0]


def _published(endpoint: str, namespace: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every metric of `namespace` on the (moto) CloudWatch: (name, its dimensions but `service`) -> its sum."""
    cloudwatch = boto3.client("cloudwatch", endpoint_url=endpoint)
    now = datetime.datetime.now(datetime.UTC)
    sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for metric in cloudwatch.list_metrics(Namespace=namespace)["Metrics"]:
        dimensions = metric["Dimensions"]
        assert {"Name": "service", "Value": "llm-relay"} in dimensions
        points = cloudwatch.get_metric_statistics(
            Namespace=namespace,
            MetricName=metric["MetricName"],
            Dimensions=dimensions,
            StartTime=now - datetime.timedelta(minutes=10),
            EndTime=now + datetime.timedelta(minutes=10),
            Period=60,
            Statistics=["Sum"],
        )["Datapoints"]
        named = tuple(sorted((d["Name"], d["Value"]) for d in dimensions if d["Name"] != "service"))
        sums[(metric["MetricName"], named)] = sum(point["Sum"] for point in points)
    return sums
