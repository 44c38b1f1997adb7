"""Telemetry says what the ledger holds, without DynamoDB: a request the relay settled is logged and counted as
its stream ended; one whose settlement is pending counts nothing until its retry writes it; one settled first by
another party (a reconciler, as `lost`) is logged with the ledger's reason and figures and counted by nobody but
its settler; and every party that settles requests as `lost` counts them through one helper."""

from __future__ import annotations

import io
import json
import logging
import uuid
from decimal import Decimal
from typing import Any

import anyio
from aws_lambda_powertools import Logger

from llm_relay.metrics import COST, RECONCILED_LOST, STREAMS, MetricsEmitter
from llm_relay.telemetry import LedgerNote, Telemetry
from llm_relay.termination import TerminationReason
from llm_relay.usage import UsageRecord
from tests.unit.test_metrics import context, outcome

LOST = UsageRecord(
    "rk_1", "req_1", "gpt-4o-mini", 0.0, "lost", 10, 7, usage_source="estimated", cost_usd=Decimal("1E-5")
)


def telemetry() -> tuple[Telemetry, list[str], io.StringIO]:
    lines: list[str] = []
    logged = io.StringIO()
    log = Logger(service=f"test-{uuid.uuid4().hex[:8]}", logger_handler=logging.StreamHandler(logged))
    return Telemetry(MetricsEmitter("LLMRelay", "llm-relay", ["gpt-4o-mini"], sink=lines.append), log), lines, logged


def _logs(logged: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in logged.getvalue().splitlines() if line.strip()]


def _streams(lines: list[str]) -> list[tuple[str, list[float]]]:
    return [(d["reason"], d[STREAMS]) for d in map(json.loads, lines) if STREAMS in d]


def test_a_request_settled_first_elsewhere_is_logged_as_the_ledger_holds_it_and_counted_by_its_settler() -> None:
    # GIVEN a stream that ended `ledger_unavailable`, whose settlement the ledger refused: the reconciler's `lost`
    tele, lines, logged = telemetry()
    tele.note("req_1", LedgerNote("refused", "lost", LOST))
    # WHEN its telemetry runs
    anyio.run(tele.finalize, context(), outcome(TerminationReason.LEDGER_UNAVAILABLE))
    # THEN its line gives the ledger's reason and figures, beside the stream's own reason
    [line] = _logs(logged)
    assert (line["reason"], line["stream_reason"], line["settlement"]) == ("lost", "ledger_unavailable", "refused")
    assert (line["completion_tokens"], line["usage_source"], line["cost_usd"]) == (7, "estimated", "0.00001")
    # AND it counts nothing: the reconciler that settled it did
    assert lines == []


def test_a_pending_settlement_is_counted_once_when_its_retry_writes_it() -> None:
    tele, lines, logged = telemetry()
    tele.note("req_1", LedgerNote("pending"))
    ended = outcome(TerminationReason.LEDGER_UNAVAILABLE)
    anyio.run(tele.finalize, context(), ended)
    # THEN at finalization: the stream's own figures, marked pending, and no metric yet
    assert _logs(logged)[0]["settlement"] == "pending" and lines == []
    # WHEN the retry writes it after the response: counted then, once
    tele.counted_late(context(), ended, LOST)
    assert _streams(lines) == [("ledger_unavailable", [1.0])]
    assert _logs(logged)[1]["message"] == "usage record written late"
    # AND a later request of the same id (no note left) is counted as usual
    anyio.run(tele.finalize, context(), outcome())
    assert _streams(lines)[-1] == ("stop", [1.0])


def test_requests_settled_as_lost_are_counted_with_their_figures() -> None:
    tele, lines, logged = telemetry()
    tele.settled_lost([LOST, UsageRecord("rk_2", "req_2", "unknown-model", 0.0, "lost", 3, 0)])
    docs = [json.loads(line) for line in lines]
    assert [d[RECONCILED_LOST] for d in docs if RECONCILED_LOST in d] == [[2.0]]
    assert _streams(lines) == [("lost", [2.0])]
    assert [(d["model"], d.get(COST)) for d in docs if "model" in d] == [("gpt-4o-mini", [1e-05]), ("other", None)]
    assert [line["usage_record"]["request_id"] for line in _logs(logged)] == ["req_1", "req_2"]
