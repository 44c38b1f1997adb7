"""`llm-relay coldstarts`: how often the deployed relay function started cold or restored a SnapStart snapshot, and
how long that took (count, p50, p90, max of `Init Duration` and `Restore Duration`, per memory size), from the
`REPORT` lines Lambda writes to the function's log group. Reads no DynamoDB.

It calls CloudWatch Logs `FilterLogEvents` with the operator's credentials (the function itself is never given that
permission), in the global `--region`, at the global `--endpoint-url` when one is given (moto serves both DynamoDB
and CloudWatch Logs). A log group that does not exist is bad input (exit code 2); refused access, missing
credentials or an unreachable endpoint is AWS failing (exit code 1): each one line on stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from . import options
from .coldstart_stats import ColdStarts, Durations, Report, parse_report
from .common import CliError, aws_configuration, aws_session
from .output import print_json, print_table

if TYPE_CHECKING:
    from ..settings import Settings

DEFAULT_STACK = "llm-relay"  # samconfig.toml's stack_name
DEFAULT_WINDOW_S = 86400.0
#: Text-format REPORT lines, or the JSON format's `platform.report` records; anything else the filter lets through
#: (an application line that happens to contain the words) is left out by `parse_report`.
FILTER_PATTERN = '?"REPORT RequestId" ?"platform.report"'
#: The standard retry mode, three attempts and a 5 s connect timeout: an unreachable endpoint is reported in seconds.
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5)
HEADERS = ["MEMORY MB", "INVOCATIONS", "WARM", "INITS", "INIT P50/P90/MAX MS", "RESTORES", "RESTORE P50/P90/MAX MS"]
_STACK = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_LOG_GROUP = re.compile(r"^[\w./#-]{1,512}$", re.ASCII)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cold = commands.add_parser(
        "coldstarts", help="cold starts and SnapStart restores of the relay function, from its REPORT log lines"
    )
    cold.add_argument(
        "--stack",
        default=DEFAULT_STACK,
        type=stack,
        metavar="NAME",
        help=f"the SAM stack; its function logs to /aws/lambda/<stack>-relay (default: {DEFAULT_STACK})",
    )
    cold.add_argument(
        "--log-group", type=log_group, metavar="GROUP", help="the log group to read (default: the stack's)"
    )
    cold.add_argument("--since", type=options.when, help="ISO date/time (UTC) or age like 30m, 6h, 7d (default: 24h)")
    cold.add_argument("--until", type=options.when, help="ISO date/time (UTC) or age (default: now)")
    cold.add_argument("--json", action="store_true", help="machine-readable output")
    cold.set_defaults(run_local=_coldstarts)


def stack(text: str) -> str:
    """A CloudFormation stack name (a letter, then up to 127 letters, digits and hyphens)."""
    if not _STACK.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a stack name (a letter, then letters, digits and -)")
    return text


def log_group(text: str) -> str:
    """A CloudWatch log group name (1 to 512 of letters, digits, `_ - / . #`)."""
    if not _LOG_GROUP.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a log group name (letters, digits and _-/.#, up to 512)")
    return text


def _coldstarts(args: argparse.Namespace, settings: Settings) -> int:
    until = args.until if args.until is not None else time.time()
    since = args.since if args.since is not None else until - DEFAULT_WINDOW_S
    if since >= until:
        raise CliError("--since must be before --until")
    group = args.log_group or f"/aws/lambda/{args.stack}-relay"
    client = logs_client(args, settings)
    try:
        stats = ColdStarts.of(read_reports(client, group, since, until))
    except ClientError as exc:
        return _refused(exc, group, client.meta.region_name)
    except NoCredentialsError:
        return _fail("no AWS credentials: give --profile, set AWS_PROFILE or AWS_ACCESS_KEY_ID, or run aws configure")
    except BotoCoreError as exc:
        return _fail(f"CloudWatch Logs FilterLogEvents on {group}: {exc}")
    if args.json:
        window = {"log_group": group, "since": iso(since), "until": iso(until), "percentiles": "nearest-rank"}
        print_json({**window, **stats.as_json()})
    else:
        _print(stats, group, since, until)
    return 0


def logs_client(args: argparse.Namespace, settings: Settings) -> Any:
    """A CloudWatch Logs client in the global options' region and profile, at their endpoint when one is given."""
    session = aws_session(args, settings.dynamodb_endpoint)  # a local endpoint (moto), as for DynamoDB
    with aws_configuration():
        return session.client(
            "logs", region_name=settings.aws_region, endpoint_url=settings.dynamodb_endpoint, config=_CONFIG
        )


def read_reports(client: Any, group: str, since: float, until: float) -> Iterator[Report]:
    """Every report in `group` from `since` to `until` (epoch seconds), every page of `FilterLogEvents`."""
    pages = client.get_paginator("filter_log_events").paginate(
        logGroupName=group, startTime=int(since * 1000), endTime=int(until * 1000), filterPattern=FILTER_PATTERN
    )
    for page in pages:
        for event in page.get("events", []):
            report = parse_report(event.get("message", ""))
            if report is not None:
                yield report


def _refused(exc: ClientError, group: str, region: str) -> int:
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "Unknown"), error.get("Message", "")
    if code == "ResourceNotFoundException":
        raise CliError(
            f"log group {group} not found in {region}: give --log-group, or --stack with the relay's stack name"
        ) from None
    if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
        return _fail(f"access denied to {group} ({message}): the operator needs logs:FilterLogEvents on it")
    return _fail(f"CloudWatch Logs FilterLogEvents on {group}: {code}: {message}")


def iso(epoch_s: float) -> str:
    """UTC to the second, as the window is given: `2026-12-01T06:00:00Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def _fail(message: str) -> int:
    """AWS refused or could not be reached: one line on stderr and exit code 1, as `llm-relay` does for DynamoDB."""
    print(f"llm-relay: error: {message}", file=sys.stderr)
    return 1


def _print(stats: ColdStarts, group: str, since: float, until: float) -> None:
    print(f"cold starts in {group}, {iso(since)} .. {iso(until)} (percentiles: nearest rank)")
    if not stats.groups:
        print("no REPORT lines in this window")
        return
    rows = [
        [str(g.memory_mb), str(g.invocations), str(g.warm), *_cells(g.init), *_cells(g.restore)] for g in stats.groups
    ]
    print_table(HEADERS, rows)
    inits, restores = (sum(getattr(g, kind).count for g in stats.groups) for kind in ("init", "restore"))
    print(f"invocations {stats.invocations}  warm {stats.warm}  inits {inits}  restores {restores}")


def _cells(durations: Durations) -> list[str]:
    """How many, and `p50 / p90 / max` in ms (`-` when none)."""
    values = [durations.p50, durations.p90, durations.max]
    spread = " / ".join(f"{value:.2f}" for value in values if value is not None)
    return [str(durations.count), spread or "-"]
