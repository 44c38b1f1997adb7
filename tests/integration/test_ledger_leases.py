"""A stream never outlives its lease, broken for real: the local DynamoDB in its own process frozen (SIGSTOP)
mid-stream for longer than a lease, and a relay process (`make dev`'s entry point) frozen for longer than its
lease while the operator's `llm-relay reconcile` settles its request as `lost`, then resumed (SIGCONT). Each ends
with the `ledger_unavailable` terminal frame, one record per request, and log, metrics and ledger agree."""

from __future__ import annotations

import datetime
import json
import os
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import boto3
import httpx
import pytest

from llm_relay.dynamo import Stores
from tests.conftest import Upstream
from tests.integration.devserver_support import DevServer, dev_server
from tests.integration.helpers import chat_body
from tests.integration.ledger_support import LocalDynamo, local_dynamodb, new_key, reconcile_cli, relay_env
from tests.waiting import wait_until

LONG = {"tokens": 100_000, "chunk_delay_ms": 20, "ttft_ms": 0}


@dataclass
class Reader:
    """One stream, read in its own thread to the end of its body: every line with the wall-clock time it arrived."""

    url: str
    key: str
    request_id: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)  # the terminal frame arrived
    closed: threading.Event = field(default_factory=threading.Event)  # the body ended (after the finalization)

    def start(self) -> Reader:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        body = chat_body(stream=True, mock=LONG)
        try:
            with (
                httpx.Client(timeout=60) as client,
                client.stream(
                    "POST",
                    f"{self.url}/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {self.key}"},
                ) as stream,
            ):
                self.request_id = stream.headers["x-request-id"]
                for line in stream.iter_lines():
                    if not self.ended.is_set() and line.strip():
                        self.lines.append((time.time(), line))
                    self.started.set()
                    if (line.startswith("data: {") and '"error"' in line) or line == "data: [DONE]":
                        self.ended.set()
        finally:
            self.started.set()
            self.ended.set()
            self.closed.set()

    @property
    def terminal(self) -> tuple[float, dict[str, Any]]:
        at, line = self.lines[-1]
        return at, json.loads(line.removeprefix("data: "))

    def content_after(self, moment: float) -> list[str]:
        return [line for at, line in self.lines if at > moment and '"content"' in line]


def _records(stores: Stores, key_id: str) -> list[Any]:
    return stores.usage.for_key(key_id, 0, 2e10)


def _streams_emitted(relay: DevServer) -> list[tuple[str, float]]:
    """The relay's `StreamsTerminated` data points, by reason."""
    return [
        (doc["reason"], value)
        for doc in relay.emf()
        if "StreamsTerminated" in doc
        for value in doc["StreamsTerminated"]
    ]


def _lost_published(dynamo: LocalDynamo) -> float:
    """What the operator's `llm-relay reconcile` published as `StreamsTerminated{reason=lost}` (to the local moto's
    CloudWatch, beside its DynamoDB)."""
    cloudwatch = boto3.client("cloudwatch", endpoint_url=dynamo.endpoint)
    now = datetime.datetime.now(datetime.UTC)
    points = cloudwatch.get_metric_statistics(
        Namespace="LLMRelay",
        MetricName="StreamsTerminated",
        Dimensions=[{"Name": "reason", "Value": "lost"}, {"Name": "service", "Value": "llm-relay"}],
        StartTime=now - datetime.timedelta(minutes=10),
        EndTime=now + datetime.timedelta(minutes=10),
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]
    return float(sum(point["Sum"] for point in points))


def _log(relay: DevServer, request_id: str, message: str) -> dict[str, Any] | None:
    return next(
        (line for line in relay.logs() if line.get("message") == message and _names(line, request_id)),
        None,
    )


def _names(line: dict[str, Any], request_id: str) -> bool:
    return line.get("request_id") == request_id or (line.get("usage_record") or {}).get("request_id") == request_id


def _settle_all(dynamo: LocalDynamo, stores: Stores, ids: list[str]) -> None:
    """Run `llm-relay reconcile` until every request is finished (whoever settles it)."""

    def finished() -> bool:
        if all("finished_at" in (stores.requests.get(rid) or {}) for rid in ids):
            return True
        reconcile_cli(dynamo.endpoint)
        return False

    wait_until(finished, "every request settled", interval=0.5)


@pytest.mark.slow
def test_dynamodb_frozen_past_a_lease_each_stream_ends_itself_before_its_lease_and_is_recorded_once(
    upstream: Upstream,
) -> None:
    lease_s, n = 6, 2
    with local_dynamodb() as dynamo, ExitStack() as stack:
        stores = dynamo.stores()
        plain, key = new_key(stores, max_concurrent=n)
        env: dict[str, Any] = relay_env(dynamo, upstream.url, RELAY_LEASE_S=str(lease_s))
        relay = stack.enter_context(dev_server(**env))
        # GIVEN n streams in flight, each past its first chunk
        readers = [Reader(relay.url, plain).start() for _ in range(n)]
        for reader in readers:
            assert reader.started.wait(30) and reader.request_id
        ids = [reader.request_id for reader in readers]
        admitted = {rid: int((stores.requests.get(rid) or {})["lease_until"]) for rid in ids}

        # AND their leases just renewed (one round renews both): what DynamoDB holds is what the relay last confirmed
        def renewed() -> dict[str, int] | None:
            leases = {rid: int((stores.requests.get(rid) or {}).get("lease_until", 0)) for rid in ids}
            return leases if all(leases[rid] > admitted[rid] for rid in ids) else None

        leases = wait_until(renewed, "a lease renewal", interval=0.02)
        # WHEN DynamoDB freezes for longer than a lease, and past the relay's finalization (it gives up on the
        # settlement, closes the body and retries after the response)
        dynamo.freeze()
        try:
            frozen_at = time.time()
            for reader in readers:
                assert reader.closed.wait(30), "the stream did not end"
            wait_until(lambda: time.time() > max(leases.values()) + 0.5, "the leases run out", interval=0.1)
        finally:
            dynamo.thaw()
        # THEN each stream ended itself with the ledger's terminal frame, before its lease could run out
        for reader in readers:
            at, frame = reader.terminal
            assert frame["error"]["code"] == "ledger_unavailable", frame
            assert frozen_at < at < leases[reader.request_id], (at - frozen_at, leases[reader.request_id] - at)
        # AND once DynamoDB is back, each request has exactly one record (the relay's late one, or the reconciler's)
        _settle_all(dynamo, stores, ids)
        records = {rid: [r for r in _records(stores, key.key_id) if r.request_id == rid] for rid in ids}
        assert all(len(found) == 1 for found in records.values()), records
        reasons = {rid: found[0].termination_reason for rid, found in records.items()}
        assert set(reasons.values()) <= {"ledger_unavailable", "lost"}

        # AND log and metrics say what the ledger holds: the relay counted the records it wrote late, the operator's
        # reconcile the ones it settled as lost, and nothing was counted twice
        def told(rid: str) -> bool:
            message = "usage record written late" if reasons[rid] == "ledger_unavailable" else "late settlement refused"
            return _log(relay, rid, message) is not None

        wait_until(lambda: all(told(rid) for rid in ids), "the relay's word on each late settlement", interval=0.2)
        for rid in ids:
            finished = _log(relay, rid, "request finished")
            assert finished is not None and finished["settlement"] == "pending", finished
            assert finished["stream_reason"] == "ledger_unavailable"
        late = sum(1 for reason in reasons.values() if reason == "ledger_unavailable")
        assert _streams_emitted(relay) == [("ledger_unavailable", 1.0)] * late
        assert _lost_published(dynamo) == n - late
        day = stores.usage.spend(key.key_id, "D#" + time.strftime("%Y-%m-%d", time.gmtime()))
        assert day["requests"] == n
        assert stores.limits.read_counters(key.key_id, time.time())["concurrency"]["active"] == 0


@pytest.mark.slow
def test_a_relay_paused_past_its_lease_ends_its_stream_at_once_and_writes_no_second_record(upstream: Upstream) -> None:
    lease_s = 3
    with local_dynamodb() as dynamo, ExitStack() as stack:
        stores = dynamo.stores()
        plain, key = new_key(stores, max_concurrent=1)
        env: dict[str, Any] = relay_env(dynamo, upstream.url, RELAY_LEASE_S=str(lease_s))
        relay = stack.enter_context(dev_server(**env))
        stack.callback(os.kill, relay.pid, signal.SIGCONT)  # never leave it frozen
        # GIVEN a stream in flight, its progress checkpointed by a renewal
        reader = Reader(relay.url, plain).start()
        assert reader.started.wait(30) and reader.request_id
        rid = reader.request_id

        def progressed() -> bool:
            return int((stores.requests.get(rid) or {}).get("cp_completion", 0)) > 0

        wait_until(progressed, "the stream checkpointed by a renewal", interval=0.1)
        # WHEN the relay process is paused for longer than its lease, and the operator's reconcile settles the
        # request as `lost` meanwhile
        os.kill(relay.pid, signal.SIGSTOP)
        try:
            settled: list[dict[str, Any]] = []

            def reconciled() -> bool:
                settled.extend(reconcile_cli(dynamo.endpoint)["settled"])
                return any(record["request_id"] == rid for record in settled)

            wait_until(reconciled, "the paused relay's request settled as lost", interval=0.5)
        finally:
            resumed_at = time.time()
            os.kill(relay.pid, signal.SIGCONT)
        # THEN once resumed, the relay ends the stream at once with the ledger's terminal frame, relaying nothing more
        assert reader.ended.wait(10), "the stream did not end"
        at, frame = reader.terminal
        assert frame["error"]["code"] == "ledger_unavailable" and at - resumed_at < 5.0, (frame, at - resumed_at)
        assert reader.content_after(resumed_at) == []
        # AND the ledger holds one record of it: the reconciler's `lost`, from its last checkpoint
        relay.wait_finished(rid)
        [record] = [r for r in _records(stores, key.key_id) if r.request_id == rid]
        assert (record.termination_reason, record.usage_source) == ("lost", "estimated")
        assert stores.usage.spend(key.key_id, "D#" + record.day)["requests"] == 1
        # AND the relay logged its refused late settlement in full, beside what the ledger holds
        refused = _log(relay, rid, "late settlement refused")
        assert refused is not None and refused["ledger_reason"] == "lost"
        assert refused["usage_record"]["termination_reason"] == "ledger_unavailable"
        assert refused["usage_record"]["completion_tokens"] >= record.completion_tokens > 0
        assert refused["ledger_record"]["completion_tokens"] == record.completion_tokens
        # AND its log line says what the ledger holds, and its metrics count nothing the reconciler counted
        finished = _log(relay, rid, "request finished")
        assert finished is not None
        assert (finished["reason"], finished["stream_reason"], finished["settlement"]) == (
            "lost",
            "ledger_unavailable",
            "refused",
        )
        assert finished["completion_tokens"] == record.completion_tokens
        assert finished["cost_usd"] == format(record.cost_usd, "f")
        assert _streams_emitted(relay) == []
        assert _lost_published(dynamo) == 1.0
        assert stores.limits.read_counters(key.key_id, time.time())["concurrency"]["active"] == 0
