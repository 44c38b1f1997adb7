"""`llm-relay`: manage API keys and read usage, against AWS or the dev moto server.

    llm-relay keys create --name NAME [--models a,b] [--rpm N] [--tpm N] [--max-concurrent N]
                          [--daily-budget-usd X] [--monthly-budget-usd X]
    llm-relay keys list
    llm-relay keys revoke KEY_ID
    llm-relay keys set-limits KEY_ID [--rpm N|unlimited|default] ...
    llm-relay usage [--key KEY_ID] [--since WHEN] [--until WHEN] [--totals-only]
    llm-relay prices [MODEL]
    llm-relay reconcile        settle requests whose relay stopped (expired leases) as `lost`

Every command takes `--json`. The table and endpoint come from `RELAY_TABLE_NAME` and
`RELAY_DYNAMODB_ENDPOINT` (unset: AWS), the region from `AWS_REGION`. Input is checked before anything is
written; an error goes to stderr with a non-zero exit code (2: bad input, 1: unknown key or store error).
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from botocore.exceptions import NoRegionError
from pydantic import ValidationError

from .dynamo import KeyStore, Stores
from .errors import StoreUnavailable
from .keys import ApiKey, generate_key, generate_key_id, hash_key, now_iso
from .limits import LIMIT_NAMES, Limits, parse_limit
from .pricing import PriceTable
from .settings import Settings
from .usage import UsageRecord, UsageTotals, iso_ms

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CliError(Exception):
    """A failure to report on stderr with exit code 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if os.environ.get("RELAY_DYNAMODB_ENDPOINT"):  # a local moto server accepts any credentials
        for name, value in (("AWS_ACCESS_KEY_ID", "dev"), ("AWS_SECRET_ACCESS_KEY", "dev")):
            os.environ.setdefault(name, value)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"llm-relay: error: invalid configuration in the environment:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "prices":  # no DynamoDB, no AWS region needed
        return _prices(args, settings)
    try:
        stores = Stores.from_settings(settings)
    except NoRegionError:
        print("llm-relay: error: no AWS region: set AWS_REGION (or configure one for the AWS profile)", file=sys.stderr)
        return 2
    try:
        result: int = args.run(args, settings, stores)
        return result
    except CliError as exc:
        print(f"llm-relay: error: {exc}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"llm-relay: error: DynamoDB request failed ({exc}); table {settings.table_name!r}", file=sys.stderr)
        return 1


# --- argument parsing ----------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-relay", description="Manage llm-relay API keys and read usage.")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="create, list, revoke keys and set their limits")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)

    create = key_commands.add_parser("create", help="create a key; prints the plain key once")
    create.add_argument("--name", required=True, type=_name, help="who or what the key is for")
    create.add_argument("--models", type=_models, default=None, help="comma-separated allow-list (default: all)")
    _limit_options(create)
    create.set_defaults(run=_keys_create)

    listing = key_commands.add_parser("list", help="list keys (never the plain keys)")
    listing.set_defaults(run=_keys_list)

    revoke = key_commands.add_parser("revoke", help="revoke a key (effective within the auth cache TTL)")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)

    set_limits = key_commands.add_parser("set-limits", help="set or clear a key's own limits")
    set_limits.add_argument("key_id")
    _limit_options(set_limits)
    set_limits.set_defaults(run=_keys_set_limits)

    usage = commands.add_parser("usage", help="usage records and totals for a key or all keys")
    usage.add_argument("--key", dest="key_id", help="one key id (default: all keys)")
    usage.add_argument(
        "--since", type=_when, default=None, help="ISO date/time (UTC) or age like 30m, 6h, 7d (default: 24h)"
    )
    usage.add_argument("--until", type=_when, default=None, help="ISO date/time (UTC) or age (default: now)")
    usage.add_argument("--totals-only", action="store_true", help="print the totals, not every request")
    usage.set_defaults(run=_usage)

    prices = commands.add_parser(
        "prices", help="the prices the relay charges (USD per million tokens) and their source"
    )
    prices.add_argument("model", nargs="?", help="one model, as a request names it (default: every priced model)")

    reconcile = commands.add_parser("reconcile", help="settle requests whose relay stopped as lost; print them")
    reconcile.set_defaults(run=_reconcile)

    for sub in (create, listing, revoke, set_limits, usage, prices, reconcile):
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _limit_options(parser: argparse.ArgumentParser) -> None:
    for name in LIMIT_NAMES:
        kind = "USD" if not LIMIT_NAMES[name] else "N"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar=kind,
            type=_limit(name),
            default=argparse.SUPPRESS,
            help=f"{name}: a number, 'unlimited', or 'default' (use the configured default)",
        )


def _limit(name: str) -> Callable[[str], Decimal | None]:
    def parse(text: str) -> Decimal | None:
        try:
            return parse_limit(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _name(text: str) -> str:
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError("the name must not be empty")
    if len(name) > 128 or not name.isprintable():
        raise argparse.ArgumentTypeError("the name must be at most 128 printable characters")
    return name


def _models(text: str) -> frozenset[str] | None:
    models = frozenset(m.strip() for m in text.split(",") if m.strip())
    if not models:
        raise argparse.ArgumentTypeError("--models needs at least one model name (omit it to allow all)")
    return None if "*" in models else models


def _when(text: str) -> float:
    """An instant (epoch seconds) from an ISO date/time in UTC, `now`, or an age like `90m`."""
    value = text.strip()
    if value == "now":
        return time.time()
    relative = _RELATIVE.match(value)
    if relative:
        return time.time() - float(relative.group(1)) * _UNITS[relative.group(2)]
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value, fmt)))
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"cannot read time {text!r}: use 2025-01-31, 2025-01-31T12:00Z, now, or 6h")


# --- keys ----------------------------------------------------------------------------------------------------
def _given_limits(args: argparse.Namespace) -> dict[str, Decimal | None]:
    return {name: getattr(args, name) for name in LIMIT_NAMES if hasattr(args, name)}


def _keys_create(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    limits = {name: value for name, value in _given_limits(args).items() if value is not None}
    key = ApiKey(
        key_id=generate_key_id(), name=args.name, created_at=now_iso(), allowed_models=args.models, limits=limits
    )
    plain = generate_key()
    stores.keys.put(key, hash_key(plain))
    view = {**_key_view(key, settings), "key": plain}
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(f"created key {key.key_id} ({key.name})")
        print(f"  key      {plain}")
        print("  This is the only time the key is shown: store it now.")
        print(f"  limits   {_limits_text(key, settings)}")
        print(f"  models   {', '.join(sorted(key.allowed_models)) if key.allowed_models else 'all'}")
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    keys = sorted((key for key, _ in stores.keys.list_all()), key=lambda k: (k.created_at, k.key_id))
    if args.json:
        print(json.dumps([_key_view(key, settings) for key in keys], indent=2))
        return 0
    rows = [
        [
            k.key_id,
            k.name,
            k.status,
            k.created_at,
            ",".join(sorted(k.allowed_models)) if k.allowed_models else "all",
            _limits_text(k, settings),
        ]
        for k in keys
    ]
    _table(["KEY ID", "NAME", "STATUS", "CREATED", "MODELS", "LIMITS"], rows)
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    key, key_hash = _existing(stores.keys, args.key_id)
    if key.active:
        key = ApiKey(key.key_id, key.name, "revoked", key.created_at, now_iso(), key.allowed_models, key.limits)
        stores.keys.replace(key, key_hash)
    ttl = f"{settings.auth_cache_ttl_s:g}"
    if args.json:
        print(json.dumps({**_key_view(key, settings), "effective_within_s": settings.auth_cache_ttl_s}, indent=2))
    else:
        print(
            f"revoked key {key.key_id} ({key.name}) at {key.revoked_at}; running relays refuse it within "
            f"{ttl} s (RELAY_AUTH_CACHE_TTL_S)"
        )
    return 0


def _keys_set_limits(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    given = _given_limits(args)
    if not given:
        raise CliError(
            "nothing to set: give at least one of " + ", ".join("--" + n.replace("_", "-") for n in LIMIT_NAMES)
        )
    key, key_hash = _existing(stores.keys, args.key_id)
    limits = dict(key.limits)
    for name, value in given.items():
        if value is None:
            limits.pop(name, None)
        else:
            limits[name] = value
    key = ApiKey(key.key_id, key.name, key.status, key.created_at, key.revoked_at, key.allowed_models, limits)
    stores.keys.replace(key, key_hash)
    if args.json:
        print(json.dumps(_key_view(key, settings), indent=2))
    else:
        print(
            f"key {key.key_id} limits: {_limits_text(key, settings)} (relays apply them within "
            f"{settings.auth_cache_ttl_s:g} s)"
        )
    return 0


def _existing(keys: KeyStore, key_id: str) -> tuple[ApiKey, str]:
    found = keys.get_by_id(key_id.strip())
    if found is None:
        raise CliError(f"no key with id {key_id!r} (see `llm-relay keys list`)")
    return found


def _key_view(key: ApiKey, settings: Settings) -> dict[str, Any]:
    from .limiter import default_limits

    return {
        "key_id": key.key_id,
        "name": key.name,
        "status": key.status,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "allowed_models": sorted(key.allowed_models) if key.allowed_models is not None else None,
        "limits": {name: "unlimited" if value < 0 else str(value) for name, value in key.limits.items()},
        "effective_limits": Limits.resolve(key.limits, default_limits(settings)).describe(),
    }


def _limits_text(key: ApiKey, settings: Settings) -> str:
    """`rpm=5 daily_budget_usd=2*` (`*`: the configured default, not the key's own value)."""
    effective = _key_view(key, settings)["effective_limits"]
    parts = [
        f"{name}={value}{'' if name in key.limits else '*'}"
        for name, value in effective.items()
        if value != "unlimited" or name in key.limits
    ]
    return " ".join(parts) if parts else "unlimited"


# --- usage ---------------------------------------------------------------------------------------------------
def _usage(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    until = args.until if args.until is not None else time.time()
    since = args.since if args.since is not None else until - 86400
    if since >= until:
        print("llm-relay: error: --since must be before --until", file=sys.stderr)
        return 2
    usage = stores.usage
    records = usage.for_key(args.key_id, since, until) if args.key_id else usage.for_all(since, until)
    totals = UsageTotals.of(records)
    if args.json:
        body: dict[str, Any] = {
            "since": iso_ms(since),
            "until": iso_ms(until),
            "key_id": args.key_id,
            "totals": totals.as_json(),
        }
        if not args.totals_only:
            body["records"] = [record.as_json() for record in records]
        print(json.dumps(body, indent=2))
        return 0
    scope = f"key {args.key_id}" if args.key_id else "all keys"
    print(f"usage for {scope}, {iso_ms(since)} .. {iso_ms(until)}")
    if not args.totals_only:
        _table(
            [
                "TIME",
                "KEY ID",
                "REQUEST ID",
                "MODEL",
                "REASON",
                "PROMPT",
                "COMPLETION",
                "COST USD",
                "TTFT MS",
                "DURATION MS",
            ],
            [_usage_row(record) for record in records],
        )
    _print_totals(totals)
    return 0


def _prices(args: argparse.Namespace, settings: Settings) -> int:
    """Per-million prices as the relay will charge them (packaged table + RELAY_PRICES_JSON), with their source."""
    try:
        table = PriceTable.load(settings.prices_json)
    except ValueError as exc:
        print(f"llm-relay: error: {exc}", file=sys.stderr)
        return 2
    if args.model is None:
        entries = table.models
    else:
        entry = table.entry_for(args.model)
        if entry is None:
            print(
                f"llm-relay: error: no price for {args.model!r}: a key with a budget is refused it "
                "(RELAY_UNPRICED_MODELS=refuse); add one with RELAY_PRICES_JSON",
                file=sys.stderr,
            )
            return 1
        entries = [entry]
    rows = []
    for entry in entries:
        price = table.price_of(entry)
        assert price is not None
        rows.append(
            {
                "model": entry,
                "input": format(price.input, "f"),
                "cached_input": format(price.cached_input, "f"),
                "output": format(price.output, "f"),
                "source": table.source_of(entry),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _table(["model", "input $/M", "cached $/M", "output $/M", "source"], [list(r.values()) for r in rows])
    return 0


def _reconcile(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    """Settle every request whose lease expired without a finish (exactly once, whoever else runs it)."""
    from .pricing import PriceTable
    from .reconciler import Reconciler

    done = Reconciler(stores, PriceTable.load(settings.prices_json), settings.usage_retention_days).run()
    if args.json:
        body = {"settled": [record.as_json() for record in done.settled], "skipped": done.skipped}
        print(json.dumps(body, indent=2))
        return 0
    print(f"settled {len(done.settled)} request(s) as lost; {done.skipped} already settled by someone else")
    if done.settled:
        _table(
            ["TIME", "KEY ID", "REQUEST ID", "MODEL", "PROMPT", "COMPLETION", "COST USD"],
            [_usage_row(record)[:4] + _usage_row(record)[5:8] for record in done.settled],
        )
    return 0


def _usage_row(record: UsageRecord) -> list[str]:
    est = {"estimated": " (est)", "lower_bound": " (at least)"}.get(record.usage_source, "")
    return [
        record.timestamp,
        record.key_id,
        record.request_id,
        record.model,
        record.termination_reason,
        f"{record.prompt_tokens}{est}",
        f"{record.completion_tokens}{est}",
        "unknown" if record.cost_usd is None else format(record.cost_usd, "f"),
        "-" if record.ttft_ms is None else f"{record.ttft_ms:.0f}",
        "-" if record.duration_ms is None else f"{record.duration_ms:.0f}",
    ]


def _print_totals(totals: UsageTotals) -> None:
    data = totals.as_json()
    print(
        f"requests {data['requests']}  prompt tokens {data['prompt_tokens']}  completion tokens "
        f"{data['completion_tokens']}  cost ${data['cost_usd']}  estimated {data['estimated_requests']}  "
        f"unpriced {data['unpriced_requests']}"
    )
    reasons = ", ".join(f"{reason} {count}" for reason, count in data["termination_reasons"].items())
    print(f"termination reasons: {reasons or '-'}")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
