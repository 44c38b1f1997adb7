"""Cold starts from REPORT lines (pure): the text and JSON shapes Lambda writes, nothing else counted as a report,
nearest-rank percentiles, groups per memory size."""

from __future__ import annotations

import json

import pytest

from llm_relay.commands.coldstart_stats import ColdStarts, Durations, Report, nearest_rank, parse_report

#: REPORT lines as Lambda writes them in the text log format (the request ids are made up, the shapes are not).
COLD_1024 = (
    "REPORT RequestId: 3f5b0c5e-8c1e-4a6e-9d55-0c7b1a2d9e11\tDuration: 812.45 ms\tBilled Duration: 1405 ms\t"
    "Memory Size: 1024 MB\tMax Memory Used: 142 MB\tInit Duration: 592.31 ms"
)
WARM_1024 = (
    "REPORT RequestId: 6d0e2a41-0b7c-4f4e-8a1b-2c9d3e4f5a60\tDuration: 35.02 ms\tBilled Duration: 36 ms\t"
    "Memory Size: 1024 MB\tMax Memory Used: 143 MB"
)
RESTORE_512 = (
    "REPORT RequestId: 9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d\tDuration: 40.10 ms\tBilled Duration: 341 ms\t"
    "Memory Size: 512 MB\tMax Memory Used: 150 MB\tRestore Duration: 300.55 ms\tBilled Restore Duration: 301 ms"
)
#: Lines of the same log group that are not reports.
NOT_REPORTS = [
    "START RequestId: 3f5b0c5e-8c1e-4a6e-9d55-0c7b1a2d9e11 Version: 7\n",
    "END RequestId: 3f5b0c5e-8c1e-4a6e-9d55-0c7b1a2d9e11\n",
    "INIT_START Runtime Version: python:3.12.v38\tRuntime Version ARN: arn:aws:lambda:us-east-1::runtime:0a1b\n",
    '{"level":"INFO","message":"REPORT RequestId: is a field of the platform log","service":"llm-relay"}\n',
    "REPORT of the upstream pool: 3 connections\n",
    "quoted by the relay: REPORT RequestId: 1\tDuration: 1.00 ms\tMemory Size: 1024 MB\tInit Duration: 5.00 ms\n",
    '{"time":"2026-12-01T06:00:00.000Z","type":"platform.initReport","record":{"metrics":{"durationMs":590.1}}}',
]


def platform_report(**metrics: float) -> str:
    """A `platform.report` record, as Lambda writes it when the function logs in the JSON format."""
    body = {"durationMs": 40.1, "billedDurationMs": 41, "maxMemoryUsedMB": 150, **metrics}
    record = {"requestId": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "metrics": body, "status": "success"}
    return json.dumps({"time": "2026-12-01T06:00:00.000Z", "type": "platform.report", "record": record})


def test_the_three_text_shapes() -> None:
    assert parse_report(COLD_1024) == Report(1024, init_ms=592.31)
    assert parse_report(WARM_1024) == Report(1024)
    # the restore, not its billed restore duration
    assert parse_report(RESTORE_512) == Report(512, restore_ms=300.55)
    assert [report.warm for report in map(parse_report, (COLD_1024, WARM_1024, RESTORE_512)) if report] == [
        False,
        True,
        False,
    ]


def test_a_trailing_newline_and_an_xray_segment_are_tolerated() -> None:
    traced = (
        COLD_1024
        + "\t\nXRAY TraceId: 1-6750a1b2-0c1d2e3f4a5b6c7d8e9f0a1b\tSegmentId: 4a5b6c7d8e9f0a1b\tSampled: true\n"
    )
    assert parse_report(COLD_1024 + "\n") == Report(1024, init_ms=592.31)
    assert parse_report(traced) == Report(1024, init_ms=592.31)
    assert parse_report(WARM_1024 + "\t\n") == Report(1024)


@pytest.mark.parametrize("line", NOT_REPORTS)
def test_other_lines_are_not_reports(line: str) -> None:
    assert parse_report(line) is None


def test_a_report_without_a_readable_memory_size_is_left_out() -> None:
    assert parse_report(COLD_1024.replace("Memory Size: 1024 MB", "Memory Size: lots")) is None
    assert parse_report(COLD_1024.replace("Init Duration: 592.31 ms", "Init Duration: nan ms")) == Report(1024)


def test_the_json_format() -> None:
    assert parse_report(platform_report(memorySizeMB=1024, initDurationMs=592.31)) == Report(1024, init_ms=592.31)
    assert parse_report(platform_report(memorySizeMB=512, restoreDurationMs=300.55)) == Report(512, restore_ms=300.55)
    assert parse_report(platform_report(memorySizeMB=1024)) == Report(1024)
    assert parse_report(platform_report()) is None  # no memory size
    assert parse_report('{"type": "platform.report", "record": ') is None


def test_nearest_rank() -> None:
    ten = [float(n) for n in range(1, 11)]
    assert (nearest_rank(ten, 50), nearest_rank(ten, 90), nearest_rank(ten, 100)) == (5.0, 9.0, 10.0)
    assert nearest_rank([10.0, 20.0], 50) == 10.0  # an observed value: interpolation would say 15
    assert nearest_rank([10.0, 20.0], 90) == 20.0
    assert nearest_rank([7.5], 50) == nearest_rank([7.5], 90) == 7.5
    assert nearest_rank([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 90) == 10.0  # ceil(9.9) = 10
    with pytest.raises(ValueError, match="no values"):
        nearest_rank([], 50)
    with pytest.raises(ValueError, match="percent"):
        nearest_rank([1.0], 0)


def test_durations_sort_what_they_are_given() -> None:
    assert Durations.of([300.0, 100.0, 200.0]) == Durations(3, 200.0, 300.0, 300.0)
    assert Durations.of([]) == Durations(0, None, None, None)


def test_grouped_by_memory_size() -> None:
    # GIVEN two cold starts and a warm invocation at 1024 MB, a restore and a warm one at 512 MB
    lines = [COLD_1024, WARM_1024, COLD_1024.replace("592.31", "610.02"), RESTORE_512, WARM_1024.replace("1024", "512")]
    reports = [report for report in map(parse_report, lines) if report]
    # WHEN they are summed up
    stats = ColdStarts.of(reports)
    # THEN each memory size has its own counts and percentiles, the smallest first
    assert (stats.invocations, stats.warm) == (5, 2)
    assert stats.as_json() == {
        "invocations": 5,
        "warm": 2,
        "groups": [
            {
                "memory_mb": 512,
                "invocations": 2,
                "warm": 1,
                "init": {"count": 0, "p50_ms": None, "p90_ms": None, "max_ms": None},
                "restore": {"count": 1, "p50_ms": 300.55, "p90_ms": 300.55, "max_ms": 300.55},
            },
            {
                "memory_mb": 1024,
                "invocations": 3,
                "warm": 1,
                "init": {"count": 2, "p50_ms": 592.31, "p90_ms": 610.02, "max_ms": 610.02},
                "restore": {"count": 0, "p50_ms": None, "p90_ms": None, "max_ms": None},
            },
        ],
    }
    assert ColdStarts.of([]).as_json() == {"invocations": 0, "warm": 0, "groups": []}
