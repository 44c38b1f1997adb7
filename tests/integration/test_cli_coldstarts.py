"""`llm-relay coldstarts` as an operator runs it (the installed console script, a subprocess) against moto's CloudWatch
Logs: REPORT lines of the shapes Lambda writes, counted per memory size within the window and nothing else counted;
the default log group from the stack's name; a missing log group, no credentials, refused access and an unreachable
endpoint each one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import boto3
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.integration.test_cli import CLI
from tests.integration.test_cli_operator import BARE_ENV
from tests.servers import serve
from tests.unit.test_coldstart_stats import COLD_1024, NOT_REPORTS, RESTORE_512, WARM_1024, platform_report

AWS_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
HOUR_MS = 3_600_000


def coldstarts(
    *args: str, endpoint: str | None = None, credentials: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """The CLI with only what the command line (and `env`) says: no relay or AWS settings from the test run."""
    where = ["--region", "us-east-1", *(["--endpoint-url", endpoint] if endpoint else [])]
    command = [CLI, "coldstarts", *args, *where]
    keys = AWS_KEYS if credentials else {}
    env = {**BARE_ENV, "AWS_EC2_METADATA_DISABLED": "true", **keys, **env}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def logs(moto_endpoint: str) -> Any:
    return boto3.client("logs", region_name="us-east-1", endpoint_url=moto_endpoint)


def put_lines(logs: Any, group: str, events: Sequence[tuple[int, str]]) -> None:
    """A log group with one stream holding `events` (epoch ms, message), as Lambda would have written them."""
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="2026/12/01/[7]0a1b2c3d")
    ordered = [{"timestamp": at, "message": message} for at, message in sorted(events)]
    done = logs.put_log_events(logGroupName=group, logStreamName="2026/12/01/[7]0a1b2c3d", logEvents=ordered)
    assert "rejectedLogEventsInfo" not in done  # every line is in moto: what the command leaves out, it left out


def test_cold_warm_and_restored_per_memory_size(logs: Any, moto_endpoint: str) -> None:
    # GIVEN the window from six hours ago to ten minutes ago (to the minute, as an operator types it)
    now_ms = int(time.time() * 1000)
    since_ms = (now_ms - 6 * HOUR_MS) // 60_000 * 60_000
    until_ms = (now_ms - 600_000) // 60_000 * 60_000
    inside = since_ms + HOUR_MS
    # AND in it two cold starts and two warm invocations at 1024 MB, a restore and a warm one at 512 MB, and the
    # lines around them that are not reports; before and after it, a cold start each that must not count
    group = f"/aws/lambda/cs-{uuid.uuid4().hex[:8]}-relay"
    lines = [COLD_1024, WARM_1024, WARM_1024, COLD_1024.replace("592.31", "610.02"), RESTORE_512]
    lines += [WARM_1024.replace("1024 MB", "512 MB") + "\n", *NOT_REPORTS]
    outside = COLD_1024.replace("592.31", "9999.99")
    events = [(inside + n * 1000, line) for n, line in enumerate(lines)]
    events += [(since_ms - 72 * HOUR_MS, outside), (since_ms - 1, outside), (until_ms + 1, outside)]
    events += [(since_ms, WARM_1024), (until_ms, WARM_1024)]  # the window's ends are in it
    put_lines(logs, group, events)
    window = ["--log-group", group, "--since", _minute(since_ms), "--until", _minute(until_ms)]

    # WHEN the operator asks for JSON
    done = coldstarts(*window, "--json", endpoint=moto_endpoint)
    # THEN the numbers are those of the reports in the window, per memory size, nearest-rank percentiles
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "log_group": group,
        "since": _iso(since_ms),
        "until": _iso(until_ms),
        "percentiles": "nearest-rank",
        "invocations": 8,
        "warm": 5,
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
                "invocations": 6,
                "warm": 4,
                "init": {"count": 2, "p50_ms": 592.31, "p90_ms": 610.02, "max_ms": 610.02},
                "restore": {"count": 0, "p50_ms": None, "p90_ms": None, "max_ms": None},
            },
        ],
    }

    # WHEN the operator asks for the table
    table = coldstarts(*window, endpoint=moto_endpoint)
    # THEN it says the same
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        f"cold starts in {group}, {_iso(since_ms)} .. {_iso(until_ms)} (percentiles: nearest rank)",
        "MEMORY MB  INVOCATIONS  WARM  INITS  INIT P50/P90/MAX MS       RESTORES  RESTORE P50/P90/MAX MS",
        "512        2            1     0      -                         1         300.55 / 300.55 / 300.55",
        "1024       6            4     2      592.31 / 610.02 / 610.02  0         -",
        "invocations 8  warm 5  inits 2  restores 1",
    ]


def test_the_default_group_is_the_stacks_and_the_window_a_day(logs: Any, moto_endpoint: str) -> None:
    # GIVEN the log group the template gives stack S's function, with reports 2 hours and 30 hours old, in both formats
    stack = f"cs-{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    json_cold = platform_report(memorySizeMB=1024, initDurationMs=701.5)
    old = [(now_ms - 30 * HOUR_MS, COLD_1024), (now_ms - 30 * HOUR_MS, json_cold)]
    put_lines(
        logs, f"/aws/lambda/{stack}-relay", [(now_ms - 2 * HOUR_MS, RESTORE_512), (now_ms - HOUR_MS, json_cold), *old]
    )
    # WHEN the operator names only the stack
    done = coldstarts("--stack", stack, "--json", endpoint=moto_endpoint)
    # THEN the last 24 hours of its function's log group are read
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["log_group"] == f"/aws/lambda/{stack}-relay"
    assert [
        (g["memory_mb"], g["init"]["count"], g["init"]["max_ms"], g["restore"]["count"]) for g in body["groups"]
    ] == [
        (512, 0, None, 1),
        (1024, 1, 701.5, 0),
    ]


def test_lines_that_are_not_reports_are_not_counted(logs: Any, moto_endpoint: str) -> None:
    # GIVEN a log group with START, END, INIT_START and application lines, some with the word REPORT, and no report
    group = f"/aws/lambda/cs-{uuid.uuid4().hex[:8]}-relay"
    now_ms = int(time.time() * 1000)
    put_lines(logs, group, [(now_ms - HOUR_MS + n, line) for n, line in enumerate(NOT_REPORTS)])
    # WHEN the operator reads it
    table = coldstarts("--log-group", group, endpoint=moto_endpoint)
    done = coldstarts("--log-group", group, "--json", endpoint=moto_endpoint)
    # THEN no invocation is counted
    assert table.returncode == 0 and table.stdout.splitlines()[1:] == ["no REPORT lines in this window"]
    assert json.loads(done.stdout)["invocations"] == 0 and json.loads(done.stdout)["groups"] == []


def test_a_missing_log_group_is_bad_input(moto_endpoint: str) -> None:
    done = coldstarts("--stack", "nobody-deployed-this", endpoint=moto_endpoint)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "llm-relay: error: log group /aws/lambda/nobody-deployed-this-relay not found in us-east-1: give --log-group, "
        "or --stack with the relay's stack name"
    ]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--since", "1h", "--until", "2h"), "--since must be before --until"),
        (("--since", "yesterday"), "cannot read time"),
        (("--stack", "my stack"), "is not a stack name"),
        (("--log-group", "/aws/lambda/a b"), "is not a log group name"),
    ],
)
def test_bad_options_are_refused_before_any_call(args: tuple[str, ...], reason: str) -> None:
    done = coldstarts(*args, endpoint="http://127.0.0.1:9")  # nothing listens there: no call is made
    assert done.returncode == 2 and reason in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def test_no_credentials_is_one_line() -> None:
    # GIVEN no credentials anywhere (no keys, no profile files, no instance metadata) and AWS itself as the endpoint
    nowhere = {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    done = coldstarts(credentials=False, **nowhere)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        "llm-relay: error: no AWS credentials: give --profile, set AWS_PROFILE or AWS_ACCESS_KEY_ID, "
        "or run aws configure"
    ]


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    """CloudWatch Logs as it answers a caller without `logs:FilterLogEvents`."""

    async def refuse(request: Request) -> JSONResponse:
        message = "User: arn:aws:iam::123456789012:user/operator is not authorized to perform: logs:FilterLogEvents"
        return JSONResponse({"__type": "AccessDeniedException", "message": message}, status_code=400)

    with serve(Starlette(routes=[Route("/", refuse, methods=["POST"])])) as base:
        yield base


def test_access_denied_names_the_permission(refusing_endpoint: str) -> None:
    done = coldstarts("--stack", "llm-relay", endpoint=refusing_endpoint)
    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("llm-relay: error: access denied to /aws/lambda/llm-relay-relay (User: arn:aws:iam::")
    assert line.endswith("): the operator needs logs:FilterLogEvents on it")


def test_an_unreachable_endpoint_is_one_line() -> None:
    done = coldstarts(endpoint="http://127.0.0.1:9")
    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("llm-relay: error: CloudWatch Logs FilterLogEvents on /aws/lambda/llm-relay-relay: ")
    assert "127.0.0.1:9" in line


def _minute(epoch_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(epoch_ms / 1000))


def _iso(epoch_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_ms / 1000))
