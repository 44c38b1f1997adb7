"""`llm-relay coldstarts`' request to CloudWatch Logs (botocore's Stubber: the exact request is what is under test):
the window in milliseconds, the filter pattern, every page read; and its argument types."""

from __future__ import annotations

import argparse

import boto3
import pytest
from botocore.stub import Stubber

from llm_relay.commands.coldstart_stats import Report
from llm_relay.commands.coldstarts import FILTER_PATTERN, log_group, read_reports, stack
from tests.unit.test_coldstart_stats import COLD_1024, NOT_REPORTS, RESTORE_512, WARM_1024

GROUP = "/aws/lambda/llm-relay-relay"


def _page(*messages: str, token: str | None = None) -> dict[str, object]:
    events = [
        {"logStreamName": "s", "timestamp": 1, "message": message, "eventId": str(n)}
        for n, message in enumerate(messages)
    ]
    return {"events": events, **({"nextToken": token} if token else {})}


def test_every_page_is_read_and_only_reports_are_kept() -> None:
    # GIVEN a log group whose matching events come in two pages, with lines that are not reports among them
    client = boto3.client("logs", region_name="us-east-1")
    expected = {
        "logGroupName": GROUP,
        "startTime": 1_764_547_200_000,
        "endTime": 1_764_633_600_500,
        "filterPattern": FILTER_PATTERN,
    }
    with Stubber(client) as stub:
        stub.add_response("filter_log_events", _page(COLD_1024, NOT_REPORTS[0], token="page-2"), expected)
        stub.add_response(
            "filter_log_events", _page(WARM_1024, RESTORE_512, NOT_REPORTS[3]), {**expected, "nextToken": "page-2"}
        )
        # WHEN the reports from 2025-12-01T00:00Z for a day and half a second are read
        reports = list(read_reports(client, GROUP, 1_764_547_200.0, 1_764_633_600.5))
        # THEN both pages were asked for, with the window in milliseconds, and only the reports are kept
        stub.assert_no_pending_responses()
    assert reports == [Report(1024, init_ms=592.31), Report(1024), Report(512, restore_ms=300.55)]


def test_names_are_checked_before_any_call() -> None:
    assert stack("llm-relay") == "llm-relay" and log_group(GROUP) == GROUP
    for bad in ("", "1stack", "my stack", "a" * 129):
        with pytest.raises(argparse.ArgumentTypeError, match="stack name"):
            stack(bad)
    for bad in ("", "/aws/lambda/with space", "x" * 513):
        with pytest.raises(argparse.ArgumentTypeError, match="log group name"):
            log_group(bad)
