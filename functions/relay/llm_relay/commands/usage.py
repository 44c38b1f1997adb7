"""`llm-relay usage`: usage records and totals over a time range, for one key or all, optionally grouped by key,
model, day, upstream, end user or the value of one tag, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..attribution import MAX_KEY_CHARS
from ..limits.rules import MAX_SHARDS
from ..usage import UsageRecord, UsageTotals, iso_ms
from . import options
from .common import CliError
from .output import plain, print_csv, print_json, print_table, printable

if TYPE_CHECKING:
    from ..dynamo import Stores
    from ..settings import Settings

GROUPS: dict[str, Callable[[UsageRecord], str]] = {
    "key": lambda record: record.key_id,
    "model": lambda record: record.model,
    "day": lambda record: record.timestamp[:10],
    "upstream": lambda record: record.upstream or "-",  # "-": refused before any upstream was tried
    "api": lambda record: record.api,
    "user": lambda record: record.attribution.user or "-",  # "-": the request named no end user
}
TAG_PREFIX = "tag:"  # `--by tag:<name>`: by the value of one tag ("-": records without it)
RECORD_HEADERS = ["TIME", "KEY ID", "REQUEST ID", "MODEL", "REASON", "PROMPT", "COMPLETION", "COST USD", "TTFT MS"]
RECORD_HEADERS += ["DURATION MS", "USER", "TAGS", "REDACTIONS"]
RECORD_CSV_HEADERS = [*RECORD_HEADERS[:7], "USAGE SOURCE", *RECORD_HEADERS[7:]]
TOTAL_HEADERS = ["REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "COST USD", "ESTIMATED", "UNPRICED", "REDACTIONS"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = commands.add_parser("usage", help="usage records and totals for a key or all keys")
    usage.add_argument("--key", dest="key_id", type=options.key_id, help="one key id (default: all keys)")
    usage.add_argument("--since", type=options.when, help="ISO date/time (UTC) or age like 30m, 6h, 7d (default: 24h)")
    usage.add_argument("--until", type=options.when, help="ISO date/time (UTC) or age (default: now)")
    usage.add_argument(
        "--by",
        type=group_by,
        metavar="{" + ",".join(sorted(GROUPS)) + f",{TAG_PREFIX}<name>}}",
        help="totals per key, model, day, upstream, end user or the value of one tag instead of every request",
    )
    usage.add_argument("--totals-only", action="store_true", help="print the totals, not every request")
    usage.add_argument("--format", choices=("table", "json", "csv"), default=None, help="output format (table)")
    usage.add_argument("--json", action="store_true", help="the same as --format json")
    usage.set_defaults(run=_usage)


def _usage(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    until = args.until if args.until is not None else time.time()
    since = args.since if args.since is not None else until - 86400
    if since >= until:
        raise CliError("--since must be before --until")
    fmt = "json" if args.json else (args.format or "table")
    records = (
        stores.usage.for_key(args.key_id, since, until, MAX_SHARDS)  # every partition a key may have used
        if args.key_id
        else stores.usage.for_all(since, until)
    )
    if fmt == "json":
        print_json(_as_json(args, records, since, until))
    elif fmt == "csv":
        print_csv(*_rows(args, records, csv=True))
    else:
        scope = f"key {args.key_id}" if args.key_id else "all keys"
        print(f"usage for {scope}, {iso_ms(since)} .. {iso_ms(until)}")
        if args.by or not args.totals_only:
            print_table(*_rows(args, records))
        _print_totals(UsageTotals.of(records))
    return 0


def group_by(text: str) -> str:
    """A `--by` value: a name of `GROUPS`, or `tag:<name>` (a tag's name as a request gives it)."""
    if text in GROUPS:
        return text
    if text.startswith(TAG_PREFIX):
        name = text.removeprefix(TAG_PREFIX)
        if name and len(name) <= MAX_KEY_CHARS:
            return text
        raise argparse.ArgumentTypeError(f"{TAG_PREFIX}<name> needs a tag name of 1 to {MAX_KEY_CHARS} characters")
    choices = ", ".join([*sorted(GROUPS), f"{TAG_PREFIX}<name>"])
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {choices})")


def group_of(by: str) -> Callable[[UsageRecord], str]:
    """What a record is grouped under for a `group_by` value."""
    if by.startswith(TAG_PREFIX):
        name = by.removeprefix(TAG_PREFIX)
        return lambda record: record.attribution.tags.get(name) or "-"
    return GROUPS[by]


def grouped(records: list[UsageRecord], by: str) -> dict[str, UsageTotals]:
    """Totals per group value, in order of the value."""
    key = group_of(by)
    groups: dict[str, UsageTotals] = {}
    for record in records:
        groups.setdefault(key(record), UsageTotals()).add(record)
    return dict(sorted(groups.items()))


def _group_header(by: str) -> str:
    if by.startswith(TAG_PREFIX):
        return "TAG:" + printable(by.removeprefix(TAG_PREFIX))  # the tag's name as requests spell it
    return by.upper()


def _as_json(args: argparse.Namespace, records: list[UsageRecord], since: float, until: float) -> dict[str, Any]:
    body: dict[str, Any] = {
        "since": iso_ms(since),
        "until": iso_ms(until),
        "key_id": args.key_id,
        "totals": UsageTotals.of(records).as_json(),
    }
    if args.by:
        body["by"] = args.by
        body["groups"] = [{args.by: name, **totals.as_json()} for name, totals in grouped(records, args.by).items()]
    elif not args.totals_only:
        body["records"] = [record.as_json() for record in records]
    return body


def _rows(
    args: argparse.Namespace, records: list[UsageRecord], *, csv: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one per group with --by, one per request otherwise; totals only: one row. `csv`: records
    as `record_csv_cells` (numbers only in numeric columns)."""
    if args.by:
        groups = grouped(records, args.by)
        return [_group_header(args.by), *TOTAL_HEADERS], [[printable(k), *_total_cells(t)] for k, t in groups.items()]
    if args.totals_only:
        return TOTAL_HEADERS, [_total_cells(UsageTotals.of(records))]
    if csv:
        return RECORD_CSV_HEADERS, [record_csv_cells(record) for record in records]
    return RECORD_HEADERS, [record_cells(record) for record in records]


def _total_cells(totals: UsageTotals) -> list[str]:
    total_tokens = totals.prompt_tokens + totals.completion_tokens
    counts = [totals.requests, totals.prompt_tokens, totals.completion_tokens, total_tokens]
    return (
        [str(n) for n in counts]
        + [plain(totals.cost_usd), str(totals.estimated_requests)]
        + [str(totals.unpriced_requests), redactions_text(totals.redactions)]
    )


def record_cells(record: UsageRecord) -> list[str]:
    """One usage record as table cells; tokens the relay estimated are marked, and a lower bound says so."""
    est = {"estimated": " (est)", "lower_bound": " (at least)"}.get(record.usage_source, "")
    return [
        record.timestamp,
        record.key_id,
        record.request_id,
        printable(record.model),
        record.termination_reason,
        f"{record.prompt_tokens}{est}",
        f"{record.completion_tokens}{est}",
        "unknown" if record.cost_usd is None else plain(record.cost_usd),
        "-" if record.ttft_ms is None else f"{record.ttft_ms:.0f}",
        "-" if record.duration_ms is None else f"{record.duration_ms:.0f}",
        *attribution_cells(record),
        redactions_text(record.redactions, record.prompt_redactions),
    ]


def record_csv_cells(record: UsageRecord) -> list[str]:
    """One usage record for a spreadsheet: every numeric column a number or empty (cost unknown, no first token),
    and how the tokens were counted in a column of its own (`usage_source`, as in the JSON record)."""
    return [
        record.timestamp,
        record.key_id,
        record.request_id,
        printable(record.model),
        record.termination_reason,
        str(record.prompt_tokens),
        str(record.completion_tokens),
        record.usage_source,
        "" if record.cost_usd is None else plain(record.cost_usd),
        "" if record.ttft_ms is None else f"{record.ttft_ms:.0f}",
        "" if record.duration_ms is None else f"{record.duration_ms:.0f}",
        *attribution_cells(record),
        redactions_text(record.redactions, record.prompt_redactions),
    ]


def attribution_cells(record: UsageRecord) -> list[str]:
    """The end user and the tags (`team=search feature=autocomplete`), each `-` when the request named none."""
    tags = " ".join(f"{printable(name)}={printable(value)}" for name, value in record.attribution.tags.items())
    return [printable(record.attribution.user or "-"), tags or "-"]


def redactions_text(output: Mapping[str, int], prompt: Mapping[str, int] | None = None) -> str:
    """What the sanitizer caught, by entity type: `EMAIL=2 PHONE_NUMBER=1 prompt:EMAIL=1`; `-` when nothing."""
    parts = [f"{printable(name)}={count}" for name, count in sorted(output.items()) if count]
    parts += [f"prompt:{printable(name)}={count}" for name, count in sorted((prompt or {}).items()) if count]
    return " ".join(parts) or "-"


def _print_totals(totals: UsageTotals) -> None:
    data = totals.as_json()
    print(
        f"requests {data['requests']}  prompt tokens {data['prompt_tokens']}  completion tokens "
        f"{data['completion_tokens']}  cost ${data['cost_usd']}  estimated {data['estimated_requests']}  "
        f"unpriced {data['unpriced_requests']}"
    )
    reasons = ", ".join(f"{reason} {count}" for reason, count in data["termination_reasons"].items())
    print(f"termination reasons: {reasons or '-'}")
    print(f"redactions: {redactions_text(totals.redactions)}")
