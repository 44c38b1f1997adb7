"""The scheduled reconciler's Lambda handler (template.yaml `ReconcilerFunction`): one pass over the table, its
metric on stdout as EMF (what the dashboard and the alarm read)."""

from __future__ import annotations

import json
import time

import anyio
import pytest

from llm_relay import reconcile_handler
from llm_relay.dynamo import Stores
from llm_relay.metrics import RECONCILED_LOST, STREAMS
from tests.integration.limits_support import context, key_with, limiter


def test_the_scheduled_handler_settles_expired_requests_and_reports_them(
    stores: Stores, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN two requests admitted 10 minutes ago whose relay died
    key = key_with(max_concurrent=5)
    past = time.time() - 600
    limits = limiter(moto_endpoint, stores.table_name, clock=lambda: past, lease_s=60)
    for rid in ("req_h1", "req_h2"):
        anyio.run(limits.admit, context(key, rid))
    monkeypatch.setenv("RELAY_DYNAMODB_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("RELAY_TABLE_NAME", stores.table_name)
    monkeypatch.setattr(reconcile_handler, "_reconciler", None)
    capsys.readouterr()
    # WHEN the schedule invokes the handler, twice
    first = reconcile_handler.handler({}, None)
    second = reconcile_handler.handler({}, None)
    # THEN the first pass settles both, the second finds nothing
    assert (first["settled"], second["settled"]) == (2, 0)
    # AND its metrics are on stdout as EMF: 2 then 0 settled as lost, and 2 streams ended `lost`
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert [d[RECONCILED_LOST] for d in docs if RECONCILED_LOST in d] == [[2.0], [0.0]]
    assert [(d[STREAMS], d["reason"]) for d in docs if STREAMS in d] == [([2.0], "lost")]
